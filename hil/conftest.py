"""The target of the HIL scenarios: ``HIL_TARGET=qemu`` (the default: the image ``HIL_IMAGE``, or else the
generic-x86_64 image built here with the step cache of build/image-cache, booted in QEMU) or
``HIL_TARGET=ssh://root@HOST`` (a board flashed with an appliance image; see hil/README.md). ``HIL_BUNDLE``
names the firmware bundle the update scenarios install (for QEMU: the one built with the image)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.targets import QemuTarget, SshTarget, Target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    where = os.environ.get("HIL_TARGET", "qemu")
    bundle = Path(os.environ["HIL_BUNDLE"]) if os.environ.get("HIL_BUNDLE") else None
    if where.startswith("ssh://"):
        board = SshTarget(where, bundle)
        board.power_on()
        yield board
        return
    if where != "qemu":
        pytest.fail(f"HIL_TARGET={where!r}: use qemu or ssh://[user@]host[:port]")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("the QEMU target needs qemu-system-x86 (make installs it)")
    work = tmp_path_factory.mktemp("hil")
    if os.environ.get("HIL_IMAGE"):  # make hil builds it outside the network namespace the scenarios run in
        built = Path(os.environ["HIL_IMAGE"])
    elif os.geteuid() == 0:
        from appliance.image.boards import load_board
        from appliance.image.build import build

        made = build(load_board("generic-x86_64"), work / "out", ROOT / "build" / "image-cache")
        built, bundle = made.image, bundle or made.bundle
    else:
        pytest.skip("building the QEMU target's image needs root")
    image = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(built), str(image)], check=True)
    guest = QemuTarget(image, work, bundle)
    guest.power_on()
    yield guest
    guest.close()
