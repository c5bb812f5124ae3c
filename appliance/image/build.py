"""`appliance image build BOARD`: a bootable A/B disk image for a board family, in cached steps.

1. **tree**: a Debian tree made by mmdebstrap (the board's suite and architecture, with its security and
   updates suites), with the kernel, systemd, systemd-boot and the image's packages;
2. **system**: the tree made an appliance's root: fstab (root read-only from the kernel command line, the data
   partition at /var, the ESP at /efi), hostname, a first-boot machine id, the slot marker unit;
3. **partitions**: ESP (systemd-boot as the removable-media loader, slot a's kernel, initrd and its blessed
   entry), root-a (the tree without /var), root-b (empty), data (the tree's /var);
4. **image**: the GPT image, its block map, and a firmware bundle of the same root for the other slot.

Each step's output is kept under ``cache/<step>-<hash>`` where the hash covers the step's inputs (the board
file, the package list, this module's recipe version, the previous step), so a rebuild redoes only what
changed. Steps that make filesystems run as root (mmdebstrap's root mode; ownership in the tree).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.image import slots
from appliance.image.boards import Board
from appliance.image.disk import assemble, bmap, derived_uuid, make_filesystem
from appliance.image.firmware import make_bundle

RECIPE = 1  # bump when a step's recipe changes: every cached step is rebuilt
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "systemd-boot", "initramfs-tools", "e2fsprogs",
                 "dosfstools", "ca-certificates", "iproute2")
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SLOT_MARKER = """[Unit]
Description=Say which root slot booted (serial console; boot tests wait for it)
After=local-fs.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/appliance-slot-marker
[Install]
WantedBy=multi-user.target
"""
SLOT_MARKER_SCRIPT = """#!/bin/sh
slot=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^appliance.slot=//p')
echo "APPLIANCE-SLOT ${slot:-none} UP" > /dev/console
"""


class BuildError(ApplianceError):
    """An image step failed; the message names the step and the tool's last words."""


@dataclass
class Built:
    image: Path
    bmap: Path
    bundle: Path
    manifest: Path


Step = Callable[[str], None]


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _cached(cache: Path, name: str, key: str, make: Callable[[Path], None]) -> Path:
    """The step's output directory: reused when its key matches, else made beside and renamed in."""
    done = cache / f"{name}-{key}"
    if (done / ".complete").exists():
        return done
    work = cache / f".{name}-{key}.work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    make(work)
    (work / ".complete").touch()
    for stale in cache.glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work.rename(done)
    return done


def _run(step: str, args: list[str], log: Path) -> None:
    with log.open("a") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-8:]
        raise BuildError(f"step {step}: {args[0]} failed (exit {proc.returncode}): " + " | ".join(tail))


def packages(board: Board, extra: tuple[str, ...] = ()) -> list[str]:
    return sorted({*BASE_PACKAGES, board.kernel, *extra})


def build(board: Board, out: Path, cache: Path, extra: tuple[str, ...] = (), step: Step = lambda s: None) -> Built:
    if os.geteuid() != 0:
        raise BuildError("image builds run as root (mmdebstrap's root mode and file ownership in the tree); "
                         "fix: sudo appliance image build …")
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{board.name}.log"
    log.write_text("")
    wanted = packages(board, extra)
    board_key = board.model_dump_json()

    def tree(work: Path) -> None:
        sources = [f"deb {MIRROR} {board.suite} main", f"deb {MIRROR} {board.suite}-updates main",
                   f"deb {SECURITY} {board.suite}-security main"]
        _run("tree", ["mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={board.arch}",
                      f"--include={','.join(wanted)}", board.suite, str(work / "root"), *sources], log)

    step("Debian tree (mmdebstrap)")
    tree_dir = _cached(cache, "tree", _hash(RECIPE, board_key, wanted), tree) / "root"

    def parts(work: Path) -> None:
        system = work / "root"
        _run("system", ["cp", "-a", "--reflink=auto", str(tree_dir), str(system)], log)  # device nodes too
        _make_system(board, system)
        _partition_files(board, system, work)

    step("system and partitions")
    part_dir = _cached(cache, "parts", _hash(RECIPE, board_key, tree_dir, SLOT_MARKER, SLOT_MARKER_SCRIPT,
                                                _options(board)), parts)

    step("image, block map, bundle")
    image = out / f"{board.name}.img"
    files = {name: part_dir / f"{name}.part" for name in ("esp", "root-a", "root-b", "data")}
    assemble(image, board, files)
    block_map = bmap(image)
    kernel, initrd = _boot_files(part_dir / "root")
    slot_root = out / f"{board.name}.root.ext4"  # the root filesystem shrunk to its content, for the bundle
    _run("bundle", ["cp", "--sparse=always", str(files["root-a"]), str(slot_root)], log)
    _run("bundle", ["e2fsck", "-fy", str(slot_root)], log)
    _run("bundle", ["resize2fs", "-M", str(slot_root)], log)
    bundle = make_bundle(out / f"{board.name}.bundle", board.name, 2, slot_root, kernel, initrd, _options(board))
    slot_root.unlink()
    manifest = out / f"{board.name}.manifest.json"
    dpkg = subprocess.run(["dpkg-query", f"--admindir={part_dir / 'root' / 'var/lib/dpkg'}", "-W",
                           "-f=${Package}=${Version}\\n"], capture_output=True, text=True).stdout.split()
    manifest.write_text(json.dumps({"board": board.name, "recipe": RECIPE, "packages": sorted(dpkg),
                                    "image": image.name, "bundle": bundle.name}, indent=1))
    return Built(image, block_map, bundle, manifest)


def _options(board: Board) -> str:
    return f"console=tty0 console={board.console},115200 rootwait"  # the last console is /dev/console


def _make_system(board: Board, root: Path) -> None:
    (root / "etc" / "fstab").write_text(
        "# root: read-only, from the kernel command line (root=PARTLABEL=root-<slot> ro)\n"
        "PARTLABEL=data  /var  ext4  defaults,noatime  0  2\n"
        "PARTLABEL=esp   /efi  vfat  umask=0077,noauto,x-systemd.automount  0  2\n")
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "etc" / "machine-id").write_text("uninitialized\n")  # first boot: systemd makes one (read-only /etc:
    (root / "efi").mkdir(exist_ok=True)                         # held in memory until /etc is writable)
    unit = root / "etc" / "systemd" / "system" / "appliance-slot.service"
    unit.write_text(SLOT_MARKER)
    script = root / "usr" / "local" / "sbin" / "appliance-slot-marker"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SLOT_MARKER_SCRIPT)
    script.chmod(0o755)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "appliance-slot.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/appliance-slot.service")
    getty = wants / f"serial-getty@{board.console}.service"
    if not getty.is_symlink():
        getty.symlink_to("/lib/systemd/system/serial-getty@.service")


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError("the tree has no kernel or initrd in /boot (is the board's kernel package right?)")
    return kernels[-1], initrds[-1]


def _partition_files(board: Board, root: Path, work: Path) -> None:
    kernel, initrd = _boot_files(root)
    esp = work / "esp-tree"
    loader = root / "usr" / "lib" / "systemd" / "boot" / "efi" / "systemd-bootx64.efi"
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    shutil.copyfile(loader, esp / "EFI" / "BOOT" / "BOOTX64.EFI")
    slots.write_entry(slots.DirEsp(esp), "a", 1, kernel.read_bytes(), initrd.read_bytes(), _options(board), tries=0)
    var = work / "var-tree"
    shutil.move(root / "var", var)
    (root / "var").mkdir()
    trees: dict[str, Path | None] = {"esp": esp, "root-a": root, "root-b": None, "data": var}
    for spec in board.layout:
        make_filesystem(spec, work / f"{spec.name}.part", trees[spec.name], derived_uuid(board.name, spec.name, "fs"))
    (root / "var").rmdir()
    shutil.move(var, root / "var")  # back in the cached tree: the manifest reads its package list
    shutil.rmtree(esp)
