"""`appliance image flash` on real loop devices: the image lands on the disk (GPT and data read back), and the
refusals come before anything is written: not a block device, too small, mounted, the system's own disk."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.image.disk import bmap, partitions
from appliance.image.flash import FlashError, check_target
from tests.support.cli import appliance
from tests.support.images import build, tiny_boards

needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup")


@contextmanager
def loop(backing: Path, size: int) -> Iterator[Path]:
    with backing.open("wb") as fh:
        fh.truncate(size)
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if device.returncode != 0:
        pytest.skip(f"no loop device here: {device.stderr.strip()}")
    path = Path(device.stdout.strip())
    try:
        yield path
    finally:
        subprocess.run(["losetup", "-d", str(path)], check=False)


@needs
def test_an_image_is_flashed_to_a_loop_device_and_reads_back(tmp_path: Path) -> None:
    image, _ = build(tmp_path, tiny_boards(tmp_path / "boards"), "disk")
    bmap(image)
    with loop(tmp_path / "disk.raw", image.stat().st_size + (8 << 20)) as device:
        done = appliance("image", "flash", str(image), str(device), "--yes")
        assert done.returncode == 0, done.stderr
        assert [p.name for p in partitions(device)] == ["esp", "root-a", "root-b", "data"]
        written = (tmp_path / "disk.raw").read_bytes()[:image.stat().st_size]
    assert written == image.read_bytes()


@needs
def test_what_would_hurt_is_refused_before_writing(tmp_path: Path) -> None:
    image, _ = build(tmp_path, tiny_boards(tmp_path / "boards"), "disk")
    bmap(image)
    small = appliance("image", "flash", str(image), str(tmp_path / "not-a-disk"), "--yes")
    assert small.returncode == 2 and "No such file" in small.stderr
    regular = tmp_path / "file.raw"
    regular.write_bytes(b"\0" * 1024)
    out = appliance("image", "flash", str(image), str(regular), "--yes")
    assert out.returncode == 2 and "not a block device" in out.stderr
    with loop(tmp_path / "tiny.raw", 8 << 20) as device:
        out = appliance("image", "flash", str(image), str(device), "--yes")
        assert out.returncode == 2 and "the image needs" in out.stderr
    with loop(tmp_path / "big.raw", image.stat().st_size) as device:
        number = (Path("/sys/class/block") / device.name / "dev").read_text().strip()
        proc = tmp_path / "proc"
        (proc / "self").mkdir(parents=True)
        mounted = f"36 25 {number} / /media/usb rw,relatime shared:1 - ext4 {device} rw\n"
        (proc / "self" / "mountinfo").write_text(mounted)
        with pytest.raises(FlashError, match="mounted at /media/usb"):
            check_target(device, image.stat().st_size, proc)
        (proc / "self" / "mountinfo").write_text(mounted.replace("/media/usb", "/"))
        with pytest.raises(FlashError, match="mounted at /"):
            check_target(device, image.stat().st_size, proc)
        (proc / "self" / "mountinfo").write_text("1 0 0:1 / / rw - overlay overlay rw\n")
        assert check_target(device, image.stat().st_size, proc) == device.name
