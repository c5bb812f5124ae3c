"""Firmware bundles into the other A/B slot, on a disk image (`appliance firmware … --image`) and on a
"running" system of partition files: the new slot is tried next with its root read back verified; a bad
bundle switches nothing; a power cut while writing leaves only the old slot bootable; rollback; a system
without slots says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from appliance.image import firmware, slots
from appliance.image.boards import load_board
from appliance.image.disk import derived_uuid, make_filesystem, read_at
from tests.support.cli import appliance
from tests.support.images import build, tiny_boards
from tests.support.supervision import ROOT


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A tiny A/B image whose slot a (generation 1, blessed) is what the build installed."""
    boards = tiny_boards(tmp_path / "boards")
    made, placed = build(tmp_path, boards, "disk")
    esp = slots.ImageEsp(made, placed[0].start)
    slots.write_entry(esp, "a", 1, b"kernel 1", b"initrd 1", "console=ttyS0", tries=0)
    return made


def bundle(tmp: Path, version: str, generation: int = 2, size_mib: int = 12) -> Path:
    board = load_board("tiny-x86", tmp / "boards")
    tree = tmp / f"root-{version}"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "appliance-version").write_text(version)
    spec = board.layout[1].model_copy(update={"size_mib": size_mib})
    root = make_filesystem(spec, tmp / f"root-{version}.ext4", tree, derived_uuid("root", version))
    (tmp / "vmlinuz").write_bytes(b"kernel " + version.encode())
    (tmp / "initrd.img").write_bytes(b"initrd " + version.encode())
    return firmware.make_bundle(tmp / f"fw-{version}.tar", "tiny-x86", generation, root, tmp / "vmlinuz",
                                tmp / "initrd.img", "console=ttyS0 quiet")


def slot_file(image: Path, slot: str, path: str, tmp: Path) -> str:
    system = firmware.open_image(image)
    target = system.roots[slot]  # type: ignore[index]
    part = read_at(image, target.offset, target.size, tmp / f"slot-{slot}.ext4")
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True, text=True).stdout


def test_a_bundle_goes_to_the_other_slot_is_tried_next_and_can_be_rolled_back(image: Path, tmp_path: Path) -> None:
    fw = bundle(tmp_path, "2.0")
    done = appliance("firmware", "install", str(fw), "--image", str(image))
    assert done.returncode == 0 and "slot b holds generation 2" in done.stdout, done.stderr
    state = json.loads(appliance("firmware", "status", "--image", str(image), "--json").stdout)
    assert state["next"] == "b" and state["slots"]["b"]["state"] == "trying"
    assert state["slots"]["a"] == {"generation": 1, "state": "good", "entry": "appliance-0001-a.conf"}
    assert slot_file(image, "b", "/etc/appliance-version", tmp_path) == "2.0"
    esp = firmware.open_image(image).esp
    assert esp.read("b/vmlinuz") == b"kernel 2.0"
    assert "quiet" in esp.read(f"{slots.ENTRIES}/{state['slots']['b']['entry']}").decode()

    back = appliance("firmware", "rollback", "--image", str(image))
    assert back.returncode == 0, back.stderr
    assert json.loads(appliance("firmware", "status", "--image", str(image), "--json").stdout)["next"] == "a"


def test_a_bad_bundle_switches_nothing(image: Path, tmp_path: Path) -> None:
    fw = bundle(tmp_path, "2.1")
    with tarfile.open(fw) as tar:
        offset = tar.getmember("root.ext4").offset_data
    data = bytearray(fw.read_bytes())
    data[offset + 1024 * 1024] ^= 0xFF  # one flipped byte inside the root image
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(data))
    out = appliance("firmware", "install", str(broken), "--image", str(image))
    assert out.returncode == 2 and "does not match its manifest" in out.stderr and "not switched" in out.stderr
    assert [e.slot for e in slots.boot_order(firmware.open_image(image).esp)] == ["a"]

    big = bundle(tmp_path, "3.0", size_mib=20)  # the slots hold 12 MiB
    out = appliance("firmware", "install", str(big), "--image", str(image))
    assert out.returncode == 2 and "does not fit slot b" in out.stderr
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    out = appliance("firmware", "install", str(junk), "--image", str(image))
    assert out.returncode == 2 and "not a usable firmware bundle" in out.stderr


def test_a_power_cut_while_writing_leaves_only_the_old_slot_bootable(image: Path, tmp_path: Path) -> None:
    first = bundle(tmp_path, "2.0")
    firmware.install(firmware.open_image(image), first)
    slots.bless(firmware.open_image(image).esp, "b")  # b good (gen 2); now a new release goes to a
    tiny_boards(tmp_path / "next" / "boards")
    second = bundle(tmp_path / "next", "3.0", generation=3)
    code = ("import sys, time; from pathlib import Path; from appliance.image import firmware; "
            "firmware.install(firmware.open_image(Path(sys.argv[1])), Path(sys.argv[2]), "
            "progress=lambda n: (print('chunk', flush=True), time.sleep(0.1)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(image), str(second)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "chunk"  # writing the root image
    time.sleep(0.3)  # a few of its 12 one-MiB chunks in
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    order = slots.boot_order(firmware.open_image(image).esp)
    assert [(e.slot, e.state) for e in order] == [("b", "good")]  # the half-written slot a has no entry


def test_a_running_system_writes_the_slot_it_did_not_boot_and_a_plain_one_has_no_slots(tmp_path: Path) -> None:
    proc, dev, efi = tmp_path / "proc", tmp_path / "by-partlabel", tmp_path / "efi"
    proc.mkdir()
    (proc / "cmdline").write_text("root=PARTLABEL=root-a ro appliance.slot=a console=ttyS0\n")
    with pytest.raises(firmware.FirmwareError, match="no A/B slots"):
        firmware.open_running(proc, dev, (efi,))
    dev.mkdir()
    for slot in "ab":
        (dev / f"root-{slot}").write_bytes(b"\0" * (12 << 20))  # stand-ins for the block devices
    esp = slots.DirEsp(efi)
    slots.write_entry(esp, "a", 1, b"k1", b"i1", "", tries=0)
    tiny_boards(tmp_path / "boards")
    system = firmware.open_running(proc, dev, (efi,))
    assert system.booted == "a" and system.roots["b"].size == 12 << 20
    entry = firmware.install(system, bundle(tmp_path, "2.0"))
    assert entry.slot == "b" and entry.state == "trying"
    assert (dev / "root-a").read_bytes() == b"\0" * (12 << 20)  # the running slot untouched
    assert firmware.rollback(system).slot == "a"  # the running slot gives way
    assert [(e.slot, e.state) for e in slots.boot_order(esp)] == [("b", "trying"), ("a", "bad")]


def test_the_update_agent_writes_a_signed_firmware_bundle_to_the_other_slot(image: Path, tmp_path: Path) -> None:
    from appliance.bench.repo_server import RepoServer
    from appliance.fleet.install import Hooks
    from appliance.models import ModelStore
    from tests.support import fleet

    keys = fleet.make_keys(tmp_path / "keys", ["root", *fleet.ROLES])
    repo = fleet.new_repo(tmp_path / "repo", keys, ["root"])
    fleet.add_firmware(repo, "tiny-x86", bundle(tmp_path, "2.0"), fleet.Release())
    fleet.publish(repo)
    writer = lambda path, custom: firmware.install(firmware.open_image(image), path)  # noqa: E731
    hooks = Hooks(smoke=lambda files: None, health=lambda job: None, slot_writer=writer)
    with RepoServer(tmp_path / "repo") as server:
        dev = fleet.device(ModelStore(tmp_path / "store"), tmp_path / "state", server.url,
                           repo.metadata_dir / "1.root.json", hooks, board="tiny-x86")
        status = dev.agent.poll_once()
    assert status.last_error is None, status.last_error
    assert dev.state.installed()["firmware"] == {"tiny-x86": 1}
    assert slots.boot_order(firmware.open_image(image).esp)[0].slot == "b"
    assert slot_file(image, "b", "/etc/appliance-version", tmp_path) == "2.0"
    assert dev.events()[-1]["type"] == "apply"
