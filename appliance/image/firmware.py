"""Firmware bundles and the A/B system they are installed into.

A bundle is an uncompressed tar (streamable, so a root image never has to fit in memory) of::

    manifest.json   {"format": "appliance-firmware/1", "board", "generation", "options",
                     "files": {"root.ext4" | "vmlinuz" | "initrd.img": {"size", "sha256"}}}
    root.ext4       the root filesystem for a slot
    vmlinuz  initrd.img

It travels as a signed `firmware/<board>/<version>/<file>` target of the update repository (see
docs/fleet.md); the manifest's checksums are checked again as the bundle is written.

Installing writes the root image to the slot not booted, reads it back to verify it, and only then puts the
kernel, initrd and a boot entry with tries left on the ESP (``slots``): a power cut before that leaves the
old slot the only bootable one; after it, systemd-boot tries the new slot and falls back unless it is blessed.
An ``AbSystem`` is the running device (partitions by label, the ESP mounted at /efi or /boot/efi, the booted
slot from the kernel command line) or a disk image file (the same, found in its GPT).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.image import slots
from appliance.image.slots import Esp, Slot
from appliance.models.store import sha256_file

FORMAT = "appliance-firmware/1"
CHUNK = 1 << 20
PARTS = ("root.ext4", "vmlinuz", "initrd.img")


class FirmwareError(ApplianceError):
    """A bundle cannot be read or installed; the message says why and what was left as it was."""


@dataclass
class Target:
    """Where a slot's root lives: a block device, or a region of an image file."""

    path: Path
    offset: int
    size: int


@dataclass
class AbSystem:
    esp: Esp
    roots: dict[Slot, Target]
    booted: Slot | None  # None: not running from this disk (an image file)
    board: str | None = None

    def status(self) -> dict[str, Any]:
        entries = slots.entries(self.esp)
        order = slots.boot_order(self.esp)
        return {"booted": self.booted, "next": order[0].slot if order else None,
                "slots": {s: {"generation": e.generation, "state": e.state, "entry": e.file}
                          for s, e in sorted(entries.items())}}


def make_bundle(out: Path, board: str, generation: int, root: Path, kernel: Path, initrd: Path,
                options: str = "") -> Path:
    files = {"root.ext4": root, "vmlinuz": kernel, "initrd.img": initrd}
    manifest = {"format": FORMAT, "board": board, "generation": generation, "options": options,
                "files": {name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for name, p in files.items()}}
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, _BytesReader(data))
        for name, path in files.items():
            tar.add(path, arcname=name, recursive=False)
    tmp.replace(out)
    return out


def rollback(system: AbSystem) -> slots.Entry:
    """Boot the other slot next: the one running (or, for an image, the one that would boot) loses its tries."""
    order = slots.boot_order(system.esp)
    current = system.booted or (order[0].slot if order else None)
    if current is None or slots.other(current) not in slots.entries(system.esp):
        raise FirmwareError("there is no other slot to roll back to")
    return slots.mark_bad(system.esp, current)


def install(system: AbSystem, bundle: Path, tries: int = 3,
            progress: Callable[[int], None] | None = None) -> slots.Entry:
    """Write ``bundle`` to the slot not booted and make it the one tried at the next boot."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            manifest = _manifest(tar)
            if system.board and manifest["board"] != system.board:
                raise FirmwareError(f"bundle is for board {manifest['board']}, this system is {system.board}")
            target_slot = slots.other(system.booted) if system.booted else _inactive(system)
            target = system.roots[target_slot]
            root = manifest["files"]["root.ext4"]
            if root["size"] > target.size:
                raise FirmwareError(f"root image of {root['size']} bytes does not fit slot {target_slot} "
                                    f"({target.size} bytes)")
            slots.forget(system.esp, target_slot)  # from here on, only the booted slot can boot
            _write_root(tar, target, root, progress)
            kernel = _member(tar, "vmlinuz", manifest)
            initrd = _member(tar, "initrd.img", manifest)
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise FirmwareError(f"{bundle}: not a usable firmware bundle ({exc}); nothing was switched") from None
    generation = max([e.generation for e in slots.entries(system.esp).values()] + [int(manifest["generation"]) - 1])
    return slots.write_entry(system.esp, target_slot, generation + 1, kernel, initrd, manifest["options"], tries)


def _inactive(system: AbSystem) -> Slot:
    """For an image not running: the slot that does not boot first now."""
    order = slots.boot_order(system.esp)
    return slots.other(order[0].slot) if order else "b"


def _manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    member = tar.extractfile("manifest.json")
    if member is None:
        raise FirmwareError("the bundle has no manifest.json")
    manifest = json.loads(member.read())
    if manifest.get("format") != FORMAT or set(manifest.get("files", {})) != set(PARTS):
        raise FirmwareError(f"the bundle's manifest is not {FORMAT} with {', '.join(PARTS)}")
    return dict(manifest)


def _member(tar: tarfile.TarFile, name: str, manifest: dict[str, Any]) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:
        raise FirmwareError(f"the bundle has no {name}")
    data = handle.read()
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]["sha256"]:
        raise FirmwareError(f"{name} in the bundle does not match its manifest")
    return data


def _write_root(tar: tarfile.TarFile, target: Target, root: dict[str, Any],
                progress: Callable[[int], None] | None) -> None:
    source = tar.extractfile("root.ext4")
    if source is None:
        raise FirmwareError("the bundle has no root.ext4")
    digest = hashlib.sha256()
    with target.path.open("r+b") as out:
        out.seek(target.offset)
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            if progress:
                progress(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != root["sha256"]:
        raise FirmwareError("root.ext4 in the bundle does not match its manifest; the slot is not switched")
    check = hashlib.sha256()
    with target.path.open("rb") as back:  # what the disk now holds, not what we meant to write
        back.seek(target.offset)
        left = root["size"]
        while left and (chunk := back.read(min(CHUNK, left))):
            check.update(chunk)
            left -= len(chunk)
    if check.hexdigest() != root["sha256"]:
        raise FirmwareError(f"slot written but reads back different ({target.path}); the slot is not switched")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        out, self._at = self._data[self._at:end], min(end, len(self._data))
        return out


def open_image(image: Path) -> AbSystem:
    """The A/B system of a disk image file (from its GPT)."""
    from appliance.image.disk import partitions

    table = {p.name: p for p in partitions(image)}
    missing = {"esp", "root-a", "root-b"} - set(table)
    if missing:
        raise FirmwareError(f"{image} has no partition {', '.join(sorted(missing))}: not an A/B image")
    roots: dict[Slot, Target] = {s: Target(image, table[f"root-{s}"].start, table[f"root-{s}"].size)
                                 for s in ("a", "b")}
    return AbSystem(slots.ImageEsp(image, table["esp"].start), roots, None)


def booted_slot(proc: Path = Path("/proc")) -> str | None:
    """The slot this system booted (``appliance.slot=`` on the kernel command line), None without one."""
    try:
        cmdline = (proc / "cmdline").read_text().split()
    except OSError:
        return None
    return next((a.split("=", 1)[1] for a in cmdline if a.startswith("appliance.slot=")), None)


def open_running(proc: Path = Path("/proc"), dev: Path = Path("/dev/disk/by-partlabel"),
                 esp_mounts: tuple[Path, ...] = (Path("/efi"), Path("/boot/efi"))) -> AbSystem:
    """The A/B system this device runs from; a clear error on a system without slots."""
    booted = booted_slot(proc)
    esp = next((m for m in esp_mounts if (m / "loader").is_dir()), None)
    if booted not in ("a", "b") or esp is None or not all((dev / f"root-{s}").exists() for s in "ab"):
        raise FirmwareError("this system has no A/B slots (not booted from an appliance image: no "
                            "appliance.slot= on the kernel command line, no ESP with loader/, or no root-a/root-b "
                            "partitions)")
    roots: dict[Slot, Target] = {}
    for s in ("a", "b"):
        device = (dev / f"root-{s}").resolve()
        with device.open("rb") as fh:
            size = fh.seek(0, 2)
        roots[s] = Target(device, 0, size)
    return AbSystem(slots.DirEsp(esp), roots, booted)  # type: ignore[arg-type]
