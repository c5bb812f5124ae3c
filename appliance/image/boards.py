"""Board families an image is built for: one YAML in ``images/boards/`` each (architecture, Debian suite,
firmware and bootloader, kernel flavour, console, the hardware profile it boots, the partition layout).
Typed with pydantic (unknown keys are errors); loading is the only I/O."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.config.paths import shipped
from appliance.errors import ApplianceError

# GPT partition types (the Discoverable Partitions Specification)
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT = {"amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "riscv64": "72EC70A6-CF74-40E6-BD49-4BDA08E8F224"}
VAR = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"  # the data partition is mounted at /var
MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "riscv64": "riscv64"}  # Debian architecture -> uname -m
EFI_ARCH = {"amd64": "x64", "arm64": "aa64", "riscv64": "riscv64"}  # systemd-boot<arch>.efi, BOOT<ARCH>.EFI


class BoardError(ApplianceError):
    """No such board, or its file is wrong; the message names the file and the key."""


class PartitionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["esp", "root-a", "root-b", "data"] = Field(description="Also the GPT partition label.")
    fs: Literal["vfat", "ext4"]
    size_mib: int = Field(gt=0, description="Size in MiB (the data partition may be grown on first boot).")


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arch: Literal["amd64", "arm64", "riscv64"]
    suite: str = Field(description="Debian suite: bookworm, or trixie for riscv64.")
    firmware: Literal["uefi", "u-boot"]
    bootloader: Literal["systemd-boot", "u-boot"]
    kernel: str = Field(description="Kernel package, e.g. linux-image-amd64.")
    console: str = Field(description="Serial console device for the kernel command line.")
    profile: str = Field(description="The hw/ profile this board matches.")
    layout: list[PartitionSpec]
    kiosk: bool = Field(default=False, description=(
        "The kiosk page on the device's own screen: Chromium in kiosk mode under cage on tty1, no desktop."))
    initrd_modules: list[str] = Field(default=[], description=(
        "Only these kernel modules (and their dependencies) go into the initrd (MODULES=list): a small initrd, "
        "made quickly under emulation. Empty: initramfs-tools' default (most modules)."))
    models: list[str] | None = Field(default=None, description=(
        "The models the image ships (model ids of the catalog); default: the hw profile's default set."))
    python_without: dict[str, str] = Field(default={}, description=(
        "Distributions of the device lock this board's image goes without, each with the reason (e.g. no wheel "
        "for the architecture and an sdist that cannot be built here); recorded in the manifest."))

    @model_validator(mode="after")
    def _ab_layout(self) -> Board:
        names = [p.name for p in self.layout]
        if names != ["esp", "root-a", "root-b", "data"]:
            raise ValueError(f"layout must be esp, root-a, root-b, data in that order (got {', '.join(names)})")
        if self.layout[1].size_mib != self.layout[2].size_mib:
            raise ValueError("root-a and root-b must be the same size (a slot's image fits either)")
        return self

    @property
    def foreign(self) -> bool:
        """Built on a machine of another architecture (its tree runs under binfmt emulation)."""
        return MACHINE[self.arch] != os.uname().machine

    def gpt_type(self, name: str) -> str:
        return {"esp": ESP, "data": VAR}.get(name) or ROOT[self.arch]


def boards_dir() -> Path:
    return shipped("images/boards")


def load_board(name: str, folder: Path | None = None) -> Board:
    folder = folder or boards_dir()
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise BoardError(f"no board called {name!r} (boards: {known})")
    try:
        return Board.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise BoardError(f"{path}: {exc}") from None
