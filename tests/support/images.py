"""A tiny A/B disk image for the image tests: a board file with small partitions, a root tree, an ESP tree,
built with the real tools (no mount); and the real image of a board for the boot tests (its step cache shared
between runs in build/image-cache)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.image.boards import Board, load_board
from appliance.image.build import Built
from appliance.image.build import build as build_image
from appliance.image.disk import Placed, assemble, derived_uuid, make_filesystem

SMALL = {"name": "tiny-x86", "arch": "amd64", "suite": "bookworm", "firmware": "uefi", "bootloader": "systemd-boot",
         "kernel": "linux-image-amd64", "console": "ttyS0", "profile": "generic-x86_64",
         "layout": [{"name": "esp", "fs": "vfat", "size_mib": 40}, {"name": "root-a", "fs": "ext4", "size_mib": 12},
                    {"name": "root-b", "fs": "ext4", "size_mib": 12}, {"name": "data", "fs": "ext4", "size_mib": 8}]}


def build(tmp: Path, boards: Path, out: str) -> tuple[Path, list[Placed]]:
    board = load_board("tiny-x86", boards)
    root = tmp / "tree-root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "bin" / "big").write_bytes(b"\1" * 300_000 + b"\0" * 2_000_000)
    esp = tmp / "tree-esp"
    (esp / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)
    (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 4000)
    files: dict[str, Path] = {}
    for spec in board.layout:
        tree = {"esp": esp, "root-a": root}.get(spec.name)
        files[spec.name] = make_filesystem(spec, tmp / f"{out}-{spec.name}.part", tree,
                                           derived_uuid(board.name, spec.name, "fs"))
    image = tmp / f"{out}.img"
    return image, assemble(image, board, files)


def tiny_boards(folder: Path) -> Path:
    """A boards folder holding the tiny board."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-x86.yaml").write_text(yaml.safe_dump(SMALL))
    return folder


BOOTS = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap") or not shutil.which(
    "qemu-system-x86_64"), reason="needs root, mmdebstrap and qemu-system-x86 (make installs them)")


def built_image(board: Board, factory: pytest.TempPathFactory) -> Iterator[Built]:
    """``board``'s image, its steps cached in build/image-cache; its outputs (gigabytes) gone afterwards."""
    out = factory.mktemp(f"{board.name}-image")
    yield build_image(board, out, Path(__file__).resolve().parents[2] / "build" / "image-cache")
    shutil.rmtree(out, ignore_errors=True)
