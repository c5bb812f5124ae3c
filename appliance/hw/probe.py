"""Read /proc, /sys, /dev (under an injectable root) and the platform into a HardwareReport.

Pure reading: never loads a driver or imports a runtime. A file that is missing or unreadable is
simply absent evidence, so the same code runs on a board, a VM, a container and a fixture tree.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

from appliance.hw.report import Accelerator, AcceleratorKind, Board, Cpu, HardwareReport, Memory, PciDevice

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x64": "x86_64"}
# Known NPU / accelerator PCI ids (vendor, device) -> (kind, name).
_PCI_ACCELERATORS: dict[tuple[str, str], tuple[AcceleratorKind, str]] = {
    ("0x8086", "0x7d1d"): ("intel-npu", "Intel NPU (Meteor Lake)"),
    ("0x8086", "0x643e"): ("intel-npu", "Intel NPU (Lunar Lake)"),
    ("0x8086", "0xad1d"): ("intel-npu", "Intel NPU (Arrow Lake)"),
    ("0x8086", "0xb03e"): ("intel-npu", "Intel NPU (Panther Lake)"),
    ("0x1ac1", "0x089a"): ("edgetpu", "Coral Edge TPU (PCIe)"),
}
_PCI_VENDOR_KINDS: dict[str, tuple[AcceleratorKind, str]] = {"0x1e60": ("hailo", "Hailo AI accelerator")}
_GPU_VENDORS: dict[str, tuple[AcceleratorKind, str]] = {
    "0x10de": ("nvidia-gpu", "NVIDIA GPU"),
    "0x8086": ("intel-gpu", "Intel GPU"),
    "0x1002": ("amd-gpu", "AMD GPU"),
}
_USB_EDGETPU = {("1a6e", "089a"), ("18d1", "9302")}


def probe(root: Path = Path("/")) -> HardwareReport:
    """Probe the machine whose filesystem is mounted at ``root`` (``/`` for this one)."""
    fs = _Fs(root)
    plat = _platform(fs)
    if plat.get("system") == "Darwin":
        return _probe_darwin(plat)
    cpu = _cpu(fs, plat)
    pci = _pci(fs)
    report = HardwareReport(
        system=plat.get("system") or "Linux",
        kernel=(fs.read("proc/sys/kernel/osrelease") or "").strip() or None,
        cpu=cpu,
        memory=_memory(fs),
        board=_board(fs),
        pci=pci,
    )
    report.accelerators = _accelerators(fs, report)
    return report


class _Fs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.is_live = self.root.resolve() == Path("/")

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str | Path) -> str | None:
        """A file's text; ``rel`` is relative to the root, or a Path already under it (from glob)."""
        try:
            return (rel if isinstance(rel, Path) else self.root / rel).read_text(errors="replace")
        except (OSError, ValueError):
            return None

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def glob(self, pattern: str) -> list[Path]:
        try:
            return sorted(self.root.glob(pattern))
        except OSError:
            return []

    def rel(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))


def _platform(fs: _Fs) -> dict[str, str]:
    """The platform module on the live machine; a fixture's platform.json elsewhere."""
    text = fs.read("platform.json")
    if text is not None:
        return {k: str(v) for k, v in json.loads(text).items()}
    if fs.is_live:
        return {"system": platform.system(), "machine": platform.machine()}
    return {}


def _probe_darwin(plat: dict[str, str]) -> HardwareReport:
    arch = plat.get("machine", "")
    cpu = Cpu(arch=arch, vendor="Apple" if arch == "arm64" else None, model_name=plat.get("brand"),
              cores=int(plat.get("cpu_count") or 0), flags=["neon"] if arch == "arm64" else [])
    memory_mb = int(plat.get("memory_bytes") or 0) // 2**20
    report = HardwareReport(system="Darwin", kernel=plat.get("mac_ver"), cpu=cpu,
                            memory=Memory(total_mb=memory_mb, available_mb=memory_mb), board=Board())
    if arch == "arm64":
        report.accelerators.append(Accelerator(kind="apple-ane", name="Apple Neural Engine",
                                               evidence=["platform: Darwin arm64"]))
        report.accelerators.append(Accelerator(kind="gpu", name="Apple GPU (Metal)",
                                               evidence=["platform: Darwin arm64"]))
    return report


def _cpu(fs: _Fs, plat: dict[str, str]) -> Cpu:
    text = fs.read("proc/cpuinfo") or ""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    fields: dict[str, str] = {}
    cores = 0
    for block in blocks:
        kv = _key_values(block)
        if "processor" in kv and (kv["processor"].isdigit()):
            cores += 1
        for k, v in kv.items():
            fields.setdefault(k, v)
    arch = _arch(fields, plat)
    flags: list[str] = []
    isa = None
    if "flags" in fields:
        flags = fields["flags"].split()
    elif "Features" in fields:
        flags = fields["Features"].split()
        if arch == "aarch64" and "asimd" in flags:
            flags.append("neon")
    elif "isa" in fields:
        isa = fields["isa"]
        flags = _riscv_flags(isa)
    vendor = fields.get("vendor_id") or fields.get("mvendorid") or _arm_implementer(fields.get("CPU implementer"))
    model_name = (fields.get("model name") or fields.get("Model") or fields.get("uarch") or fields.get("Hardware")
                  or _arm_cores(blocks))
    return Cpu(arch=arch, vendor=vendor, model_name=model_name, cores=cores, flags=sorted(set(flags)), isa=isa)


def _key_values(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def _arch(fields: dict[str, str], plat: dict[str, str]) -> str:
    if "flags" in fields and "vendor_id" in fields:
        return "x86_64" if " lm " in f" {fields['flags']} " else "i686"
    if fields.get("isa", "").startswith("rv64"):
        return "riscv64"
    if fields.get("isa", "").startswith("rv32"):
        return "riscv32"
    if "CPU architecture" in fields:
        return "aarch64" if fields["CPU architecture"].strip() in ("8", "9", "AArch64") else "armv7l"
    machine = plat.get("machine", "")
    return _ARCH_ALIASES.get(machine, machine) or "unknown"


def _riscv_flags(isa: str) -> list[str]:
    base, *extensions = isa.lower().split("_")
    letters = re.sub(r"^rv(32|64)", "", base)
    flags = list(letters) + extensions
    if "v" in letters:
        flags.append("rvv")
    return flags


def _arm_implementer(code: str | None) -> str | None:
    names = {"0x41": "ARM", "0x51": "Qualcomm", "0x61": "Apple", "0x4e": "NVIDIA", "0x48": "HiSilicon"}
    return names.get((code or "").lower(), code)


_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
              "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd4b": "Cortex-A78C", "0xd44": "Cortex-X1",
              "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4d": "Cortex-A715", "0xd80": "Cortex-A520",
              "0xd81": "Cortex-A720", "0xd87": "Cortex-A725"}


def _arm_cores(blocks: list[str]) -> str | None:
    """"4x Cortex-A55 + 4x Cortex-A76" from the CPU part of each core, where no model name is given."""
    counts: dict[str, int] = {}
    for block in blocks:
        part = _key_values(block).get("CPU part")
        if part:
            name = _ARM_PARTS.get(part.lower(), f"ARM part {part}")
            counts[name] = counts.get(name, 0) + 1
    return " + ".join(f"{n}x {name}" for name, n in counts.items()) or None


def _memory(fs: _Fs) -> Memory:
    kv = _key_values(fs.read("proc/meminfo") or "")

    def mb(key: str) -> int:
        value = kv.get(key, "0 kB").split()[0]
        return int(value) // 1024 if value.isdigit() else 0

    return Memory(total_mb=mb("MemTotal"), available_mb=mb("MemAvailable") or mb("MemFree"))


def _board(fs: _Fs) -> Board:
    compatible = [c for c in (fs.read("proc/device-tree/compatible") or "").split("\0") if c]
    model = (fs.read("proc/device-tree/model") or "").strip("\0\n ") or None
    dmi = {}
    for name in ("sys_vendor", "product_name", "board_vendor", "board_name", "chassis_type"):
        value = fs.read(f"sys/class/dmi/id/{name}")
        if value is not None and value.strip():
            dmi[name] = value.strip()
    if model is None and dmi.get("product_name"):
        model = " ".join(v for v in (dmi.get("sys_vendor"), dmi["product_name"]) if v)
    return Board(model=model, compatible=compatible, dmi=dmi)


def _uevent(fs: _Fs, directory: Path) -> dict[str, str]:
    text = fs.read(directory / "uevent") or ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _pci(fs: _Fs) -> list[PciDevice]:
    devices = []
    for d in fs.glob("sys/bus/pci/devices/*"):
        vendor = (fs.read(f"sys/bus/pci/devices/{d.name}/vendor") or "").strip().lower()
        device = (fs.read(f"sys/bus/pci/devices/{d.name}/device") or "").strip().lower()
        cls = (fs.read(f"sys/bus/pci/devices/{d.name}/class") or "").strip().lower()
        if not vendor:
            continue
        driver = _uevent(fs, d).get("DRIVER")
        if driver is None and (d / "driver").is_symlink():
            driver = (d / "driver").resolve().name
        devices.append(PciDevice(address=d.name, vendor=vendor, device=device, class_code=cls, driver=driver))
    return devices


def _accelerators(fs: _Fs, report: HardwareReport) -> list[Accelerator]:
    found: list[Accelerator] = []

    def add(kind: AcceleratorKind, name: str, evidence: str, driver: str | None = None) -> None:
        for acc in found:
            if acc.kind == kind and acc.name == name:
                acc.evidence.append(evidence)
                acc.driver = acc.driver or driver
                return
        found.append(Accelerator(kind=kind, name=name, driver=driver, evidence=[evidence]))

    for dev in report.pci:
        where = f"/sys/bus/pci/devices/{dev.address}"
        if (dev.vendor, dev.device) in _PCI_ACCELERATORS:
            kind, name = _PCI_ACCELERATORS[(dev.vendor, dev.device)]
            add(kind, name, where, dev.driver)
        elif dev.vendor in _PCI_VENDOR_KINDS:
            kind, name = _PCI_VENDOR_KINDS[dev.vendor]
            add(kind, name, where, dev.driver)
        elif dev.class_code.startswith("0x03") and dev.vendor in _GPU_VENDORS:
            kind, name = _GPU_VENDORS[dev.vendor]
            add(kind, name, where, dev.driver)
    for accel in fs.glob("sys/class/accel/accel*"):
        driver = _uevent(fs, accel / "device").get("DRIVER")
        if driver == "intel_vpu":
            add("intel-npu", _intel_npu_name(report), fs.rel(accel), driver)
    tegra = next((c.split(",")[1] for c in report.board.compatible if c.startswith("nvidia,tegra")), None)
    nvidia_name = f"NVIDIA Tegra GPU ({tegra})" if tegra else "NVIDIA GPU"
    if tegra:
        add("nvidia-gpu", nvidia_name, "/proc/device-tree/compatible", "nvgpu")
    if fs.exists("proc/driver/nvidia/version"):
        add("nvidia-gpu", nvidia_name, "/proc/driver/nvidia/version", "nvidia")
    for rel in ("sys/kernel/debug/rknpu/version", "proc/debug/rknpu/version"):
        version = fs.read(rel)
        if version is not None:
            add("rockchip-npu", "Rockchip NPU", "/" + rel, "RKNPU " + version.strip().rpartition(" ")[2])
    for devfreq in fs.glob("sys/class/devfreq/*.npu"):
        add("rockchip-npu", "Rockchip NPU", fs.rel(devfreq), "RKNPU")
    for rpc in ("dev/fastrpc-cdsp", "dev/adsprpc-smd"):
        if fs.exists(rpc):
            add("qualcomm-hexagon", "Qualcomm Hexagon DSP (FastRPC)", "/" + rpc, "fastrpc")
    for node in fs.glob("dev/hailo*"):
        add("hailo", "Hailo AI accelerator", fs.rel(node), "hailo_pci")
    for node in fs.glob("dev/apex_*"):
        add("edgetpu", "Coral Edge TPU (PCIe)", fs.rel(node), "apex")
    for usb in fs.glob("sys/bus/usb/devices/*"):
        ids = ((fs.read(usb / "idVendor") or "").strip(),
               (fs.read(usb / "idProduct") or "").strip())
        if ids in _USB_EDGETPU:
            add("edgetpu", "Coral Edge TPU (USB)", fs.rel(usb), None)
    for card in fs.glob("sys/class/drm/card[0-9]*"):
        if "-" in card.name:
            continue
        driver = _uevent(fs, card / "device").get("DRIVER")
        vendor = (fs.read(card / "device" / "vendor") or "").strip().lower()
        if driver == "RKNPU":
            add("rockchip-npu", "Rockchip NPU", fs.rel(card), driver)
        elif vendor in _GPU_VENDORS:
            kind, name = _GPU_VENDORS[vendor]
            add(kind, name, fs.rel(card), driver)
        elif driver and not any(a.kind in ("nvidia-gpu", "gpu") for a in found):
            add("gpu", f"GPU ({driver})", fs.rel(card), driver)
    return found


def _intel_npu_name(report: HardwareReport) -> str:
    for dev in report.pci:
        if (dev.vendor, dev.device) in _PCI_ACCELERATORS:
            return _PCI_ACCELERATORS[(dev.vendor, dev.device)][1]
    return "Intel NPU"
