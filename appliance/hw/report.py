"""The hardware report: a typed, JSON-serialisable picture of one machine. Depends on nothing else."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

AcceleratorKind = Literal[
    "nvidia-gpu",
    "intel-gpu",
    "intel-npu",
    "amd-gpu",
    "rockchip-npu",
    "qualcomm-hexagon",
    "hailo",
    "edgetpu",
    "apple-ane",
    "gpu",
]


class Cpu(BaseModel):
    arch: str = Field(description="Normalised ISA: x86_64, aarch64, riscv64, arm64 (macOS), ...")
    vendor: str | None = None
    model_name: str | None = None
    cores: int = 0
    flags: list[str] = Field(default_factory=list, description="ISA features: avx2, neon, sve, rvv, ...")
    isa: str | None = Field(None, description="ISA string where the kernel gives one (RISC-V).")


class Memory(BaseModel):
    total_mb: int = 0
    available_mb: int = 0


class Board(BaseModel):
    model: str | None = None
    compatible: list[str] = Field(default_factory=list)
    dmi: dict[str, str] = Field(default_factory=dict, description="x86 DMI ids: sys_vendor, product_name, ...")


class PciDevice(BaseModel):
    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None = None


class Accelerator(BaseModel):
    kind: AcceleratorKind
    name: str
    driver: str | None = None
    evidence: list[str] = Field(default_factory=list, description="Paths that showed it.")


class HardwareReport(BaseModel):
    system: str = Field(description="Linux, Darwin, ...")
    kernel: str | None = None
    cpu: Cpu
    memory: Memory
    board: Board
    pci: list[PciDevice] = Field(default_factory=list)
    accelerators: list[Accelerator] = Field(default_factory=list)

    def has(self, kind: str) -> bool:
        return any(a.kind == kind for a in self.accelerators)
