"""`appliance bench image`: what a board's image costs and how fast it boots and updates, in QEMU.

Measured in one run: the build cold (an empty step cache: the Debian tree from the mirror) and cached (every
step reused: the baseline), the image's raw size and what its block map says must be written, the firmware
bundle's size; then, in QEMU (TCG unless KVM is asked for and works), the time from power-on to the slot
marker on the serial console, which is printed once the appliance is READY and the health gate has judged the
boot: for slot a (the baseline; its first boot, with provisioning), after an A→B update (the time to write the
bundle is measured apart), and for a rollback (a slot that cannot boot, given up by systemd-boot's boot
counting).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from appliance.image import firmware
from appliance.image.boards import Board
from appliance.image.build import build
from appliance.image.disk import derived_uuid, make_filesystem
from appliance.image.qemu import Guest, command, kvm_works

BOOT_S = 1800  # TCG: an x86_64 image reaches READY in about a minute here, an arm64 one in about two


def run(board: Board, cache: Path, cold: bool, step: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    results: dict[str, Any] = {"board": board.name, "arch": board.arch,
                               "accelerator": "kvm" if kvm_works(board.arch) else "tcg"}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        if cold:
            step("cold build")
            start = time.perf_counter()
            build(board, work / "cold", work / "cold-cache")
            results["build_cold_s"] = round(time.perf_counter() - start, 1)
        step("build (cached steps)")
        start = time.perf_counter()
        built = build(board, work / "out", cache)
        results["build_cached_s"] = round(time.perf_counter() - start, 1)
        blocks = ElementTree.parse(built.bmap).getroot()
        size = int(blocks.findtext("BlockSize") or 4096)
        results["image_bytes"] = built.image.stat().st_size
        results["image_mapped_bytes"] = int(blocks.findtext("MappedBlocksCount") or 0) * size
        results["bundle_bytes"] = built.bundle.stat().st_size

        step("boot slot a")
        image = _copy(built.image, work / "disk.img")
        results["boot_a_s"] = _boot(image, board.arch, "APPLIANCE-SLOT a UP")
        step("A→B update")
        start = time.perf_counter()
        firmware.install(firmware.open_image(image), built.bundle)
        results["update_write_s"] = round(time.perf_counter() - start, 1)
        results["boot_b_s"] = _boot(image, board.arch, "APPLIANCE-SLOT b UP")
        step("rollback")
        image = _copy(built.image, work / "disk.img")
        firmware.install(firmware.open_image(image), unbootable_bundle(board, built.bundle, work), tries=1)
        results["rollback_to_a_s"] = _boot(image, board.arch, "APPLIANCE-SLOT a UP", reboot=True)
    results["ratios"] = {"boot_b_vs_a": round(results["boot_b_s"] / results["boot_a_s"], 2),
                         "rollback_vs_boot_a": round(results["rollback_to_a_s"] / results["boot_a_s"], 2),
                         "mapped_vs_raw": round(results["image_mapped_bytes"] / results["image_bytes"], 3)}
    if cold:
        results["ratios"]["cached_vs_cold_build"] = round(results["build_cached_s"] / results["build_cold_s"], 3)
    return results


def _copy(image: Path, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    dest.with_suffix(".ovmf-vars.fd").unlink(missing_ok=True)
    subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
    return dest


def _boot(image: Path, arch: str, marker: str, reboot: bool = False) -> float:
    args = command(image, arch, kvm=kvm_works(arch))
    if reboot:
        args = [a for a in args if a != "-no-reboot"]
    start = time.perf_counter()
    with Guest(args) as guest:
        guest.wait_for(marker, BOOT_S)
    return round(time.perf_counter() - start, 1)


def unbootable_bundle(board: Board, bundle: Path, work: Path) -> Path:
    """A bundle with ``bundle``'s kernel and an empty root: the kernel finds no init and panics (then, with
    ``panic=3``, reboots), as a release that cannot start would."""
    empty = make_filesystem(board.layout[1].model_copy(update={"size_mib": 64}), work / "empty.ext4", None,
                            derived_uuid("bench-empty-root"))
    parts = _unpack(bundle, work, ("vmlinuz", "initrd.img"))
    return firmware.make_bundle(work / "unbootable.bundle", board.name, 2, empty, parts["vmlinuz"],
                                parts["initrd.img"], f"console={board.console},115200 panic=3 rootwait")


def failing_bundle(board: Board, bundle: Path, work: Path) -> Path:
    """``bundle`` with a configuration the appliance refuses (``/etc/appliance/appliance.toml`` is not TOML):
    the system boots, ``appliance run`` exits with its error each time systemd starts it, and the health gate
    fails, as a release whose appliance cannot start would."""
    parts = _unpack(bundle, work, ("manifest.json", "root.ext4", "vmlinuz", "initrd.img"))
    options = json.loads(parts["manifest.json"].read_text())["options"]
    broken = work / "appliance.toml"
    broken.write_text("[api\nport = = 8080\n")
    script = work / "debugfs.cmd"
    script.write_text(f"cd /etc/appliance\nwrite {broken} appliance.toml\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), str(parts["root.ext4"])], check=True, capture_output=True)
    bundle = firmware.make_bundle(work / "failing.bundle", board.name, 2, parts["root.ext4"], parts["vmlinuz"],
                                  parts["initrd.img"], options)
    parts["root.ext4"].unlink()  # gigabytes, now in the bundle
    return bundle


def _unpack(bundle: Path, work: Path, names: tuple[str, ...]) -> dict[str, Path]:
    parts = {}
    with firmware.tarfile.open(bundle) as tar:
        for name in names:
            member = tar.extractfile(name)
            assert member is not None
            parts[name] = work / name
            with parts[name].open("wb") as out:
                while chunk := member.read(firmware.CHUNK):
                    out.write(chunk)
    return parts
