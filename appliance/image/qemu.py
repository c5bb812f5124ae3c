"""Booting an image in QEMU: the command (`appliance image boot` prints and runs it) and a guest the boot
tests drive through its serial console.

x86_64 boots with OVMF on q35, arm64 with AAVMF on virt (UEFI; a private copy of the variable store next to
the image, so boot entries and boot counting persist between boots of the same image) and systemd-boot. KVM
is used for the host's own architecture when asked for and /dev/kvm works, TCG otherwise (this build host's
/dev/kvm does not run guests). User-mode networking forwards the host's
ports to the guest's API (8080) and SIP (5060); tests and benchmarks keep the guest off any other network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.image.boards import MACHINE, ROOT

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class Machine:
    """How QEMU boots one architecture's UEFI images: its system emulator, machine, firmware and Debian's
    packages of them."""

    qemu: str
    machine: str
    code: Path
    variables: Path
    packages: str


MACHINES = {
    "amd64": Machine("qemu-system-x86_64", "q35", OVMF_CODE, OVMF_VARS, "qemu-system-x86 ovmf"),
    "arm64": Machine("qemu-system-aarch64", "virt", Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
                     Path("/usr/share/AAVMF/AAVMF_VARS.fd"), "qemu-system-arm qemu-efi-aarch64"),
}


class QemuError(ApplianceError):
    """QEMU is missing, or the guest did not reach what was waited for (with the console's last lines)."""


def command(image: Path, arch: str = "amd64", memory_mib: int = 2048, forwards: dict[int, int] | None = None,
            kvm: bool = False, isolated: bool = True, udp_forwards: dict[int, int] | None = None,
            qmp: Path | None = None) -> list[str]:
    """The QEMU command line that boots ``image`` with its console on stdio; ``forwards`` (TCP) and
    ``udp_forwards`` map a host port on 127.0.0.1 to a guest port. ``isolated`` (tests, benchmarks) keeps the
    guest off every network but the forwarded ports (QEMU's ``restrict=on``). ``qmp``: a unix socket for
    QEMU's machine protocol (``screendump`` of the guest's screen)."""
    if arch not in MACHINES:
        raise QemuError(f"booting {arch} images in QEMU is not supported yet (only {', '.join(MACHINES)})")
    emulated = MACHINES[arch]
    if not emulated.code.exists() or shutil.which(emulated.qemu) is None:
        raise QemuError(f"{emulated.qemu} or {emulated.code} is missing; fix: apt-get install {emulated.packages}")
    variables = image.with_suffix(".ovmf-vars.fd")
    if not variables.exists():
        shutil.copyfile(emulated.variables, variables)
    nets = ",".join([f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in (forwards or {}).items()]
                    + [f"hostfwd=udp:127.0.0.1:{host}-:{guest}" for host, guest in (udp_forwards or {}).items()])
    return [emulated.qemu, "-machine", emulated.machine, "-m", str(memory_mib), "-smp", "2",
            *(["-enable-kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]),  # max: AVX2 for numpy
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={emulated.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            "-drive", f"file={image},format=raw,if=virtio,cache=unsafe",
            "-netdev", "user,id=net0" + (",restrict=on" if isolated else "") + (f",{nets}" if nets else ""),
            "-device", "virtio-net-pci,netdev=net0",
            "-vga", "none", "-device", "virtio-vga" if arch == "amd64" else "virtio-gpu-pci",  # PRIME, for wlroots
            *(["-qmp", f"unix:{qmp},server=on,wait=off"] if qmp else []),
            "-nographic", "-serial", "mon:stdio", "-no-reboot"]  # no window; screendump still sees the card


def image_arch(image: Path) -> str:
    """The Debian architecture of an image, from the GPT type of its root partitions."""
    done = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        raise QemuError(f"{image} has no partition table sfdisk can read: {done.stderr.strip() or 'no output'}")
    types = {part["type"].upper() for part in json.loads(done.stdout)["partitiontable"].get("partitions", [])}
    found = [arch for arch, guid in ROOT.items() if guid in types]
    if not found:
        raise QemuError(f"{image} has no root partition of a known architecture (is it an appliance image?)")
    return found[0]


def kvm_works(arch: str = "amd64") -> bool:
    native = MACHINE[arch] == os.uname().machine
    return native and os.access("/dev/kvm", os.R_OK | os.W_OK) and os.environ.get("APPLIANCE_QEMU_KVM") == "1"


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


def screendump(qmp: Path, out: Path, timeout_s: float = 30) -> Path:
    """The guest's screen as a PPM file, asked for over QMP (QEMU's JSON machine protocol)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(qmp))
        replies = sock.makefile("r")
        replies.readline()  # the greeting
        for command in ({"execute": "qmp_capabilities"}, {"execute": "screendump", "arguments": {
                "filename": str(out)}}):
            sock.sendall(json.dumps(command).encode() + b"\n")
            while True:
                reply = json.loads(replies.readline())
                if "error" in reply:
                    raise QemuError(f"QEMU refused {command['execute']}: {reply['error'].get('desc', reply)}")
                if "return" in reply:
                    break  # events ("event": ...) may come first
    return out
