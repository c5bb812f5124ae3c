"""A disk image made of partition files, with no mount and no loop device (this build host has neither vfat,
device-mapper nor loop partition nodes, and a build must not need root's mounts anyway):

* each filesystem is made as its own file from a directory tree: ext4 with ``mkfs.ext4 -d``, the ESP with
  ``mkfs.vfat -C`` and mtools' ``mcopy``;
* the image gets a GPT written by ``sfdisk`` on the file (1 MiB aligned, partition labels = names, types from
  the Discoverable Partitions Specification, UUIDs derived from the board and partition names so that a
  rebuild is byte-identical), then each partition file is copied in with ``dd conv=sparse``;
* ``bmaptool create`` writes the block map that makes flashing skip the holes.

Timestamps inside the filesystems come from ``SOURCE_DATE_EPOCH`` when it is set (reproducible builds).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.image.boards import Board, PartitionSpec

MIB = 1 << 20
SECTOR = 512
NAMESPACE = uuid.UUID("6f1c7e0a-52b8-4f7e-9a55-0c1f1c0de0a5")  # this project's namespace for derived UUIDs


class DiskError(ApplianceError):
    """A partition or image could not be made; the message names the tool and what it said."""


@dataclass(frozen=True)
class Placed:
    """A partition where it lies in the image."""

    name: str
    fs: str
    start: int  # bytes from the start of the disk
    size: int
    uuid: str  # the GPT partition UUID (PARTUUID)
    type: str


def derived_uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def run(args: list[str], stdin: str | None = None) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        env["E2FSPROGS_FAKE_TIME"] = epoch
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, timeout=3600)
    except FileNotFoundError:
        raise DiskError(f"{args[0]} is not installed (make installs it: fdisk, dosfstools, mtools, "
                        "e2fsprogs, bmap-tools)") from None
    if proc.returncode != 0:
        raise DiskError(f"{' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def make_filesystem(spec: PartitionSpec, path: Path, tree: Path | None, fs_uuid: str) -> Path:
    """A filesystem of ``spec``'s size in the file ``path``, holding ``tree`` (or empty)."""
    size = spec.size_mib * MIB
    path.unlink(missing_ok=True)
    if spec.fs == "ext4":
        with path.open("wb") as fh:
            fh.truncate(size)
        args = ["mkfs.ext4", "-q", "-F", "-L", spec.name, "-U", fs_uuid, "-E",
                f"root_owner=0:0,hash_seed={fs_uuid}"]
        if tree is not None:
            clamp_mtimes(tree)
            args += ["-d", str(tree)]
        run([*args, str(path)])
        if tree is not None:
            clamp_inode_times(path, tree)
    else:
        volume_id = fs_uuid.replace("-", "")[:8]
        run(["mkfs.vfat", "--invariant", "-C", "-F", "32", "-n", spec.name.upper()[:11], "-i", volume_id,
             str(path), str(size // 1024)])
        if tree is not None and any(tree.iterdir()):
            clamp_mtimes(tree)
            run(["mcopy", "-s", "-p", "-m", "-Q", "-i", str(path), *[str(p) for p in sorted(tree.iterdir())], "::/"])
    return path


def clamp_mtimes(tree: Path) -> None:
    """With ``SOURCE_DATE_EPOCH`` set, no file of the tree is newer than it (the reproducible-builds rule), so
    that the filesystem made from it does not depend on when the tree was written."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return
    stamp = int(epoch)
    for path in [tree, *tree.rglob("*")]:
        if path.lstat().st_mtime > stamp:
            os.utime(path, (stamp, stamp), follow_symlinks=False)


def clamp_inode_times(image: Path, tree: Path) -> None:
    """``mkfs.ext4 -d`` copies each file's ctime (which no one can set on the source) and atime (which reading
    changes): with ``SOURCE_DATE_EPOCH``, set both of every inode in the new filesystem to it (one debugfs
    script)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return
    script = image.with_name(image.name + ".ctimes")
    paths = ["/", *("/" + p.relative_to(tree).as_posix() for p in sorted(tree.rglob("*")))]
    script.write_text("".join(f'sif "{p}" {field} @{int(epoch)}\n' for p in paths if '"' not in p
                              for field in ("ctime", "atime")))
    try:
        run(["debugfs", "-w", "-f", str(script), str(image)])
    finally:
        script.unlink()


def layout(board: Board) -> list[Placed]:
    """Where each partition goes: 1 MiB aligned, in the board's order, after the primary GPT."""
    placed, at = [], MIB
    for spec in board.layout:
        size = spec.size_mib * MIB
        placed.append(Placed(spec.name, spec.fs, at, size, derived_uuid(board.name, spec.name),
                             board.gpt_type(spec.name)))
        at += size
    return placed


def assemble(image: Path, board: Board, files: dict[str, Path]) -> list[Placed]:
    """Write ``image``: a GPT for ``board`` and each partition's file at its place; returns the layout."""
    placed = layout(board)
    total = placed[-1].start + placed[-1].size + MIB  # room for the backup GPT
    image.unlink(missing_ok=True)
    with image.open("wb") as fh:
        fh.truncate(total)
    lines = ["label: gpt", f"label-id: {derived_uuid(board.name, 'disk')}", "unit: sectors", ""]
    lines += [f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type}, uuid={p.uuid}, name=\"{p.name}\""
              for p in placed]
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)], "\n".join(lines) + "\n")
    for p in placed:
        source = files[p.name]
        if source.stat().st_size > p.size:
            raise DiskError(f"partition {p.name}: {source} is larger than its {p.size // MIB} MiB")
        write_at(image, p.start, source)
    return placed


def write_at(image: Path, offset: int, source: Path) -> None:
    """Copy ``source`` into ``image`` (a file or a block device) at ``offset``, keeping holes as holes."""
    run(["dd", f"if={source}", f"of={image}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
         "conv=notrunc,sparse,fsync", "status=none"])


def read_at(image: Path, offset: int, size: int, dest: Path) -> Path:
    run(["dd", f"if={image}", f"of={dest}", "bs=1M", f"skip={offset}", f"count={size}",
         "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
    return dest


def partitions(image: Path) -> list[Placed]:
    """The GPT of an image (or disk) as ``sfdisk --json`` reads it back."""
    table = json.loads(run(["sfdisk", "--json", str(image)]))["partitiontable"]
    size = table.get("sectorsize", SECTOR)
    return [Placed(p.get("name", ""), "", p["start"] * size, p["size"] * size, p["uuid"].lower(), p["type"])
            for p in table["partitions"]]


def bmap(image: Path) -> Path:
    out = image.with_suffix(image.suffix + ".bmap")
    run(["bmaptool", "-q", "create", "-o", str(out), str(image)])
    return out
