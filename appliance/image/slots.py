"""A/B root slots booted by systemd-boot with boot counting (the Boot Loader Specification's ``+LEFT-DONE``
suffix), kept as Type #1 entries on the ESP:

    loader/loader.conf                   default appliance-*   (the newest good-or-trying entry wins)
    loader/entries/appliance-0002-b+3.conf   generation 2 on slot b, 3 tries left: being tried
    loader/entries/appliance-0001-a.conf     generation 1 on slot a, no counter: blessed (good)
    a/vmlinuz  a/initrd.img  b/vmlinuz  b/initrd.img

systemd-boot sorts entries by name (newest generation first), puts entries with no tries left (``+0``) last,
and decrements the counter of the entry it boots; ``systemd-bless-boot`` drops the counter once
``boot-complete.target`` is reached (the appliance orders its READY-and-healthy check before it). So a new
slot is booted at most ``tries`` times and, never blessed, falls behind the old one, which boots again.

This module is the policy, written over a small ``Esp`` interface with two implementations: a mounted ESP
directory (the device) and an ESP inside a disk image file reached with mtools (builds and tests).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from appliance.errors import ApplianceError

ENTRIES = "loader/entries"
ENTRY = re.compile(r"^appliance-(?P<gen>\d{4})-(?P<slot>[ab])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")
LOADER_CONF = "timeout 0\ndefault appliance-*\nconsole-mode keep\neditor no\n"
Slot = Literal["a", "b"]


class SlotError(ApplianceError):
    """The slots cannot be read or changed; the message says which and why."""


class Esp(Protocol):
    def list(self, folder: str) -> list[str]: ...
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, data: bytes) -> None: ...
    def rename(self, old: str, new: str) -> None: ...
    def remove(self, path: str) -> None: ...


@dataclass(frozen=True)
class Entry:
    file: str
    generation: int
    slot: Slot
    left: int | None  # tries left; None: blessed
    done: int

    @property
    def state(self) -> Literal["good", "trying", "bad"]:
        return "good" if self.left is None else "bad" if self.left == 0 else "trying"

    def named(self, left: int | None, done: int = 0) -> str:
        counter = "" if left is None else f"+{left}" + (f"-{done}" if done else "")
        return f"appliance-{self.generation:04d}-{self.slot}{counter}.conf"


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


def entries(esp: Esp) -> dict[Slot, Entry]:
    """The appliance's entry of each slot (the newest generation when several were left behind)."""
    found: dict[Slot, Entry] = {}
    for name in esp.list(ENTRIES):
        m = ENTRY.match(name)
        if not m:
            continue
        entry = Entry(name, int(m["gen"]), m["slot"], int(m["left"]) if m["left"] is not None else None,  # type: ignore[arg-type]
                      int(m["done"] or 0))
        if entry.slot not in found or entry.generation > found[entry.slot].generation:
            found[entry.slot] = entry
    return found


def boot_order(esp: Esp) -> list[Entry]:
    """The order systemd-boot tries the entries in: newest first, entries with no tries left last."""
    return sorted(entries(esp).values(), key=lambda e: (e.state == "bad", -e.generation))


def write_entry(esp: Esp, slot: Slot, generation: int, kernel: bytes, initrd: bytes, options: str,
                tries: int = 3) -> Entry:
    """Install a slot's kernel and initrd on the ESP and its entry with ``tries`` boot attempts; the slot's
    previous entry is removed (its root is being replaced)."""
    esp.write(f"{slot}/vmlinuz", kernel)
    esp.write(f"{slot}/initrd.img", initrd)
    old = entries(esp).get(slot)
    entry = Entry("", generation, slot, tries if tries else None, 0)
    name = entry.named(entry.left)
    body = (f"title Appliance (slot {slot}, generation {generation})\nversion {generation}\n"
            f"linux /{slot}/vmlinuz\ninitrd /{slot}/initrd.img\n"
            f"options root=PARTLABEL=root-{slot} ro appliance.slot={slot} {options}\n")
    esp.write(f"{ENTRIES}/{name}", body.encode())
    if old is not None and old.file != name:
        esp.remove(f"{ENTRIES}/{old.file}")
    esp.write("loader/loader.conf", LOADER_CONF.encode())
    return Entry(name, generation, slot, entry.left, 0)


def bless(esp: Esp, slot: Slot) -> Entry:
    """Mark ``slot`` good (what systemd-bless-boot does for the booted entry)."""
    entry = _entry(esp, slot)
    if entry.left is None:
        return entry
    name = entry.named(None)
    esp.rename(f"{ENTRIES}/{entry.file}", f"{ENTRIES}/{name}")
    return Entry(name, entry.generation, slot, None, 0)


def mark_bad(esp: Esp, slot: Slot) -> Entry:
    """No tries left for ``slot``: the other slot boots next (a rollback)."""
    entry = _entry(esp, slot)
    name = entry.named(0, max(entry.done, 1))
    if name != entry.file:
        esp.rename(f"{ENTRIES}/{entry.file}", f"{ENTRIES}/{name}")
    return Entry(name, entry.generation, slot, 0, max(entry.done, 1))


def forget(esp: Esp, slot: Slot) -> None:
    """Remove ``slot``'s boot entry (before its root is overwritten: a half-written slot must never boot)."""
    entry = entries(esp).get(slot)
    if entry is not None:
        esp.remove(f"{ENTRIES}/{entry.file}")


def _entry(esp: Esp, slot: Slot) -> Entry:
    entry = entries(esp).get(slot)
    if entry is None:
        raise SlotError(f"slot {slot} has no boot entry on the ESP")
    return entry


class DirEsp:
    """The ESP mounted at a directory (``/efi`` or ``/boot/efi`` on the device)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self, folder: str) -> list[str]:
        path = self.root / folder
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        from appliance.config.files import write_atomic

        write_atomic(self.root / path, data, parents=True)

    def rename(self, old: str, new: str) -> None:
        (self.root / old).rename(self.root / new)

    def remove(self, path: str) -> None:
        (self.root / path).unlink(missing_ok=True)


class ImageEsp:
    """The ESP of a disk image file (or a partition file: offset 0), read and written with mtools."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        self.target = f"{image}@@{offset}"

    def _mtools(self, *args: str, data: bytes | None = None) -> bytes:
        env = {"MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        proc = subprocess.run([args[0], "-i", self.target, *args[1:]], input=data, capture_output=True, env=env,
                              timeout=120)
        if proc.returncode != 0:
            raise SlotError(f"{args[0]} on the ESP failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def list(self, folder: str) -> list[str]:
        try:
            out = self._mtools("mdir", "-b", f"::/{folder}")
        except SlotError:
            return []
        return sorted(Path(line.strip()).name for line in out.decode().splitlines() if line.strip())

    def read(self, path: str) -> bytes:
        return self._mtools("mtype", f"::/{path}")

    def write(self, path: str, data: bytes) -> None:
        folder = ""
        for part in path.split("/")[:-1]:
            folder += f"/{part}"
            if not self._exists(folder):
                self._mtools("mmd", f"::{folder}")
        self._mtools("mcopy", "-o", "-", f"::/{path}", data=data)

    def _exists(self, folder: str) -> bool:
        parent, _, name = folder.rpartition("/")
        try:
            listing = self._mtools("mdir", "-b", f"::{parent or '/'}").decode()
        except SlotError:
            return False
        return any(Path(line.strip()).name == name for line in listing.splitlines())

    def rename(self, old: str, new: str) -> None:
        self._mtools("mren", f"::/{old}", f"::/{new}")

    def remove(self, path: str) -> None:
        self._mtools("mdel", f"::/{path}")
