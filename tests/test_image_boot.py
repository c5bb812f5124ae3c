"""The generic-x86_64 image booted for real in QEMU (TCG, OVMF, systemd-boot), with the appliance in it:

- slot a comes up: first boot provisions the device (the enrolment token left on the boot partition is
  adopted and removed from it; the first API key is printed once on the console), the supervisor reaches
  READY, the health gate passes, and from the host `/health` answers through QEMU's port forward, the printed
  key opens `/metrics`, and a SIP OPTIONS through the forward (TCP) gets 200;
- an update to slot b is tried by systemd-boot (its boot counter), comes up healthy and is blessed (good);
- a bundle whose appliance cannot start (a configuration it refuses) fails the health gate, is marked bad and
  the machine reboots into slot a by itself;
- a bundle whose root cannot boot at all (a kernel panic) is given up by the boot counting alone;
- the power is cut (QEMU killed) while the device itself writes an update into slot b (over SSH, the bundle on a
  second disk): it boots slot a again, healthy.

The image build is cached in build/image-cache between runs (cold: a Debian tree from the mirror, the
wheelhouse, the venv; a code change redoes only the last step); boots are bounded in time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.bench.image import failing_bundle, unbootable_bundle
from appliance.image import firmware, slots
from appliance.image.boards import load_board
from appliance.image.build import Built
from appliance.image.qemu import Guest, command
from appliance.ports import free_port
from hil.targets import QemuTarget, cut_while_writing, sip_options
from tests.support.cli import appliance
from tests.support.images import BOOTS, built_image
from tests.support.supervision import ROOT

BOARD = load_board("generic-x86_64")
BOOT_S = 900  # TCG on two cores: firmware, kernel, initramfs, systemd, then the appliance to READY and healthy

needs = BOOTS


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    yield from built_image(BOARD, tmp_path_factory)


@pytest.fixture(autouse=True)
def _give_the_disk_back(tmp_path: Path) -> Iterator[None]:
    """Each test's disk copy and bundles are gigabytes: gone when it ends, not when the session does."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def rebooting(image: Path) -> Guest:
    """A guest that may reboot itself (QEMU stays up)."""
    return Guest([a for a in command(image) if a != "-no-reboot"])


def fresh(built: Built, tmp: Path) -> Path:
    image = tmp / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(built.image), str(image)], check=True)
    return image


@needs
def test_slot_a_boots_to_a_ready_healthy_appliance_reachable_from_the_host(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    esp = firmware.open_image(image).esp
    esp.write("appliance/enrolment.token", b"enrol-4d1c\n")
    api, sip = free_port(), free_port()
    with Guest(command(image, forwards={api: 8080, sip: 5060})) as guest:
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S)
        console = "\n".join(guest.lines)
        assert "APPLIANCE-HEALTH ok" in console and "enrolment token: adopted" in console, console[-3000:]
        found = re.search(r"API key \(shown once, stored hashed\): (ak_\S+)", console)
        assert found, console[-3000:]
        health = httpx.get(f"http://127.0.0.1:{api}/health", timeout=60).json()
        assert health["status"] == "ok" and health["supervisor"]["ready"], health
        assert httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=60).status_code == 401
        metrics = httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=60,
                            headers={"Authorization": f"Bearer {found.group(1)}"})
        assert metrics.status_code == 200 and "appliance" in metrics.text
        assert sip_options(sip).startswith("SIP/2.0 200"), "\n".join(guest.lines[-20:])
    assert "enrolment.token" not in esp.list("appliance")  # adopted: a secret does not stay on the card
    assert firmware.open_image(image).status()["next"] == "a"


@needs
def test_an_update_to_slot_b_is_tried_comes_up_healthy_and_is_blessed(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    firmware.install(firmware.open_image(image), built.bundle, tries=3)
    assert slots.entries(firmware.open_image(image).esp)["b"].state == "trying"
    with Guest(command(image)) as guest:
        guest.wait_for("APPLIANCE-SLOT b UP (good)", BOOT_S)
    entry = slots.entries(firmware.open_image(image).esp)["b"]
    assert entry.state == "good", entry  # systemd-bless-boot, after the health gate passed
    assert firmware.open_image(image).status()["next"] == "b"


@needs
def test_a_bundle_whose_appliance_cannot_start_is_rolled_back_to_a(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    firmware.install(firmware.open_image(image), failing_bundle(BOARD, built.bundle, tmp_path), tries=3)
    with rebooting(image) as guest:  # the gate reboots the machine
        failed = guest.wait_for("APPLIANCE-HEALTH failed", BOOT_S)
        assert "marked bad" in guest.lines[failed], guest.lines[failed]
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S, start=failed)
    entry = slots.entries(firmware.open_image(image).esp)["b"]
    assert (entry.state, entry.done) == ("bad", 1), entry  # at the first failed boot, not after three


@needs
def test_a_slot_that_cannot_boot_is_given_up_and_slot_a_boots_by_itself(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    firmware.install(firmware.open_image(image), unbootable_bundle(BOARD, built.bundle, tmp_path), tries=1)
    with rebooting(image) as guest:  # the panic reboots the machine
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S * 1.5)
    entry = slots.entries(firmware.open_image(image).esp)["b"]
    assert entry.state == "bad", entry


@needs
def test_a_power_cut_while_the_device_writes_an_update_leaves_slot_a_booting(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    device = QemuTarget(image, tmp_path, built.bundle, boot_s=BOOT_S)
    try:
        device.power_on()  # first boot: SSH with the harness's key from the boot partition
        cut_while_writing(device, "root-b", "appliance firmware install /dev/vdb")  # the bundle as a second disk
        assert firmware.open_image(image).status()["slots"].keys() == {"a"}  # b's entry went before its root
        device.power_on()
        done = device.ssh("appliance firmware status --json", timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["booted"] == "a"
        assert "APPLIANCE-HEALTH ok" in "\n".join(device.boots[-1])
    finally:
        device.close()


@needs
def test_the_image_benchmark_measures_boots_an_update_and_a_rollback(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "image.json"
    proc = appliance("bench", "image", "generic-x86_64", "--cache", str(ROOT / "build" / "image-cache"),
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["accelerator"] == "tcg" and results["build_cached_s"] < 300  # every step reused
    assert 0 < results["image_mapped_bytes"] < results["image_bytes"] and results["bundle_bytes"] > 0
    assert 0 < results["boot_a_s"] < BOOT_S and 0 < results["boot_b_s"] < BOOT_S
    assert results["rollback_to_a_s"] > results["boot_a_s"]  # a failed boot of b, then a
    assert set(results["ratios"]) == {"boot_b_vs_a", "rollback_vs_boot_a", "mapped_vs_raw"}
