"""`appliance image flash IMAGE DEVICE`: write an image to a disk with ``bmaptool copy`` (only the mapped blocks,
each range checked against the block map's checksum as it is written), after refusing what would hurt: a path
that is not a block device, a device smaller than the image, a device (or one of its partitions) that is
mounted or used as swap, and the disk this system runs from. The checks read /proc and /sys only."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from appliance.errors import ApplianceError


class FlashError(ApplianceError):
    """The image was not written; the message says why."""


def _dev_numbers(sys: Path, name: str) -> set[str]:
    """``major:minor`` of a disk and of each of its partitions."""
    base = sys / "class" / "block" / name
    numbers = {(base / "dev").read_text().strip()}
    for child in base.iterdir() if base.is_dir() else ():
        if (child / "partition").exists() and (child / "dev").exists():
            numbers.add((child / "dev").read_text().strip())
    return numbers


def _disk_of(sys: Path, number: str) -> str | None:
    """The kernel name of the whole disk holding block device ``major:minor``."""
    link = sys / "dev" / "block" / number
    if not link.exists():
        return None
    node = link.resolve()
    return node.parent.name if (node / "partition").exists() else node.name


def check_target(device: Path, image_size: int, proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> str:
    """The device's kernel name when it may be written; otherwise FlashError saying why not."""
    try:
        mode = device.stat().st_mode
    except OSError as exc:
        raise FlashError(f"{device}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise FlashError(f"{device} is not a block device (give a disk such as /dev/sdX or /dev/mmcblkN)")
    name = device.resolve().name
    if (sys / "class" / "block" / name / "partition").exists():
        raise FlashError(f"{device} is a partition; give the whole disk")
    size = int((sys / "class" / "block" / name / "size").read_text()) * 512
    if size < image_size:
        raise FlashError(f"{device} holds {size:,} bytes, the image needs {image_size:,}")
    ours = _dev_numbers(sys, name)
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] in ours:
            raise FlashError(f"{device} is mounted at {fields[4]}; unmount it first")
        if fields[4] == "/" and _disk_of(sys, fields[2]) == name:
            raise FlashError(f"{device} is the disk this system runs from")
    swaps = proc / "swaps"
    for line in swaps.read_text().splitlines()[1:] if swaps.exists() else []:
        used = Path(line.split()[0])
        if used.exists() and used.resolve().name in {name, *(p.name for p in (sys / "class/block" / name).iterdir()
                                                            if (p / "partition").exists())}:
            raise FlashError(f"{device} is used as swap ({used})")
    return name


def flash(image: Path, device: Path, bmap: Path | None = None) -> None:
    """Write ``image`` to ``device`` with its block map (``IMAGE.bmap`` beside it unless given)."""
    block_map = bmap or image.with_suffix(image.suffix + ".bmap")
    if not block_map.exists():
        raise FlashError(f"no block map {block_map}; fix: bmaptool create -o {block_map} {image}")
    check_target(device, image.stat().st_size)
    proc = subprocess.run(["bmaptool", "copy", "--bmap", str(block_map), str(image), str(device)],
                          capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        raise FlashError(f"bmaptool copy failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
