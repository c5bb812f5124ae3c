"""The generic-x86_64 image booted for real in QEMU (TCG, OVMF, systemd-boot): slot a comes up; a firmware
bundle written to slot b is tried by systemd-boot (its boot counter goes down) and comes up on b; a bundle
whose root cannot boot is given up by the firmware's boot counting and slot a boots again by itself.

The image build is cached in build/image-cache between runs (a cold build is a Debian tree from the mirror,
about two minutes here); boots are bounded in time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.bench.image import unbootable_bundle
from appliance.image import firmware, slots
from appliance.image.boards import load_board
from appliance.image.build import Built, build
from appliance.image.qemu import Guest, command
from tests.support.cli import appliance
from tests.support.supervision import ROOT

BOOT_S = 420  # TCG on two cores: firmware, kernel, initramfs and systemd

needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap") or not shutil.which(
    "qemu-system-x86_64"), reason="needs root, mmdebstrap and qemu-system-x86 (make installs them)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(load_board("generic-x86_64"), tmp_path_factory.mktemp("images"), ROOT / "build" / "image-cache")


def fresh(built: Built, tmp: Path) -> Path:
    image = tmp / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(built.image), str(image)], check=True)
    return image


@needs
def test_the_image_boots_slot_a_in_qemu(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    with Guest(command(image)) as guest:
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S)
    assert firmware.open_image(image).status()["next"] == "a"


@needs
def test_an_update_to_slot_b_is_tried_by_systemd_boot_and_boots(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    firmware.install(firmware.open_image(image), built.bundle, tries=3)
    with Guest(command(image)) as guest:
        guest.wait_for("APPLIANCE-SLOT b UP", BOOT_S)
    entry = slots.entries(firmware.open_image(image).esp)["b"]
    assert (entry.left, entry.done) == (2, 1), entry  # the firmware counted the boot: 3 tries became 2 (+2-1)


@needs
def test_a_slot_that_cannot_boot_is_given_up_and_slot_a_boots_by_itself(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    broken = unbootable_bundle(load_board("generic-x86_64"), built.bundle, tmp_path)
    firmware.install(firmware.open_image(image), broken, tries=1)
    args = [a for a in command(image) if a != "-no-reboot"]  # the panic reboots the machine
    with Guest(args) as guest:
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S * 1.5)
    entry = slots.entries(firmware.open_image(image).esp)["b"]
    assert entry.state == "bad", entry


@needs
def test_the_image_benchmark_measures_boots_an_update_and_a_rollback(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "image.json"
    proc = appliance("bench", "image", "generic-x86_64", "--cache", str(ROOT / "build" / "image-cache"),
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["accelerator"] == "tcg" and results["build_cached_s"] < 120  # every step reused
    assert 0 < results["image_mapped_bytes"] < results["image_bytes"] and results["bundle_bytes"] > 0
    assert 0 < results["boot_a_s"] < BOOT_S and 0 < results["boot_b_s"] < BOOT_S
    assert results["rollback_to_a_s"] > results["boot_a_s"]  # a failed boot of b, then a
    assert set(results["ratios"]) == {"boot_b_vs_a", "rollback_vs_boot_a", "mapped_vs_raw"}
