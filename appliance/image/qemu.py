"""Booting an image in QEMU: the command (`appliance image boot` prints and runs it) and a guest the boot
tests drive through its serial console.

x86_64 boots with OVMF (UEFI; a private copy of its variable store next to the image, so boot entries and
boot counting persist between boots of the same image) and systemd-boot. KVM is used when /dev/kvm works and
TCG otherwise (this build host's /dev/kvm does not run guests). User-mode networking forwards the host's
ports to the guest's API (8080) and SIP (5060); tests and benchmarks keep the guest off any other network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class QemuError(ApplianceError):
    """QEMU is missing, or the guest did not reach what was waited for (with the console's last lines)."""


def command(image: Path, arch: str = "amd64", memory_mib: int = 2048, forwards: dict[int, int] | None = None,
            kvm: bool = False, isolated: bool = True, udp_forwards: dict[int, int] | None = None) -> list[str]:
    """The QEMU command line that boots ``image`` with its console on stdio; ``forwards`` (TCP) and
    ``udp_forwards`` map a host port on 127.0.0.1 to a guest port. ``isolated`` (tests, benchmarks) keeps the
    guest off every network but the forwarded ports (QEMU's ``restrict=on``)."""
    if arch != "amd64":
        raise QemuError(f"booting {arch} images in QEMU is not supported yet")
    if not OVMF_CODE.exists():
        raise QemuError(f"{OVMF_CODE} is missing; fix: apt-get install ovmf qemu-system-x86")
    variables = image.with_suffix(".ovmf-vars.fd")
    if not variables.exists():
        shutil.copyfile(OVMF_VARS, variables)
    nets = ",".join([f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in (forwards or {}).items()]
                    + [f"hostfwd=udp:127.0.0.1:{host}-:{guest}" for host, guest in (udp_forwards or {}).items()])
    return ["qemu-system-x86_64", "-machine", "q35", "-m", str(memory_mib), "-smp", "2",
            *(["-enable-kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]),  # max: AVX2 for numpy
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            "-drive", f"file={image},format=raw,if=virtio,cache=unsafe",
            "-netdev", "user,id=net0" + (",restrict=on" if isolated else "") + (f",{nets}" if nets else ""),
            "-device", "virtio-net-pci,netdev=net0",
            "-nographic", "-serial", "mon:stdio", "-no-reboot"]


def kvm_works() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and os.environ.get("APPLIANCE_QEMU_KVM") == "1"


@dataclass
class Guest:
    """A running QEMU guest whose console output is collected line by line."""

    args: list[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if shutil.which(self.args[0]) is None:
            raise QemuError(f"{self.args[0]} is not installed; fix: apt-get install qemu-system-x86 ovmf")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))

    def wait_for(self, text: str, timeout_s: float, start: int = 0) -> int:
        """The index of the first console line from ``start`` on containing ``text``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n in range(start, len(self.lines)):
                if text in self.lines[n]:
                    return n
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = " | ".join(self.lines[-12:])
        raise QemuError(f"the guest did not print {text!r} within {timeout_s:g} s; console: {tail}")

    def kill(self) -> None:
        """Pull the plug."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
