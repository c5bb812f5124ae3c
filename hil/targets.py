"""The targets the HIL scenarios run on: a device running an appliance image, reached over SSH (as root, with
a key), its API and SIP by address, and a way to cut its power.

- ``QemuTarget``: an image booted in QEMU (TCG here). The harness's public key is put on the image's boot
  partition before its first boot (first-boot provisioning adopts it and starts sshd), the first API key is
  read from the serial console, the API, SIP and SSH are forwarded to 127.0.0.1, a firmware bundle is handed
  over as a read-only second disk (``/dev/vdb``), and a power cut is QEMU killed.
- ``SshTarget``: a real board (``HIL_TARGET=ssh://root@HOST``): the API key from ``HIL_API_KEY``, bundles
  copied with scp to /var/tmp, and a power cut is ``HIL_POWER_CUT`` (a command that switches the board's
  socket off and on again, e.g. a smart plug's); without it the power-cut scenario is skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

import httpx

from appliance.image import firmware
from appliance.image.qemu import Guest, command
from appliance.ports import free_port

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
KEY_LINE = re.compile(r"API key \(shown once, stored hashed\): (ak_\S+)")


class TargetError(Exception):
    """The target did not come up or could not be reached; the message says what was waited for."""


class Target(Protocol):
    api: str  # base URL of the device's API, as the harness reaches it
    api_key: str
    sip: tuple[str, int]  # where the harness sends SIP (TCP)
    media_host: str  # the harness's address as the device reaches it (its RTP goes there); "" if it cannot

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]: ...
    def ssh_background(self, command: str) -> subprocess.Popen[str]: ...
    def wait_ssh(self, timeout_s: float) -> None: ...
    def bundle_path(self) -> str: ...
    def power_cut(self) -> None: ...
    def power_on(self) -> None: ...


def loopback_only() -> bool:
    """Whether this process runs in a network namespace with nothing but loopback (``make hil`` makes one),
    where a QEMU guest may be let out of its isolation: all it can reach is this harness."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]  # (sysfs shows the namespace it was mounted in)


def address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))
        return str(sock.getsockname()[0])


def sip_options(port: int, host: str = "127.0.0.1") -> str:
    """The status line of the answer to an OPTIONS sent over TCP to host:port (TCP: QEMU's isolated user-mode
    network, restrict=on, passes no UDP answer back through a forward)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        local = sock.getsockname()[1]
        branch = secrets.token_hex(6)
        sock.sendall((f"OPTIONS sip:appliance@127.0.0.1:{port};transport=tcp SIP/2.0\r\n"
                      f"Via: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bK{branch};rport\r\n"
                      f"From: <sip:probe@127.0.0.1>;tag={branch}\r\nTo: <sip:appliance@127.0.0.1>\r\n"
                      f"Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                      "Content-Length: 0\r\n\r\n").encode())
        try:
            return sock.recv(65535).decode(errors="replace").split("\r\n")[0]
        except TimeoutError:
            return "no answer"


def wait_ready(target: Target, timeout_s: float, models: bool = False) -> dict[str, object]:
    """Wait until the device's /health says the supervisor is ready (READY=1: every service listens) and, with
    ``models``, that the models are warm too; its body."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{target.api}/health", timeout=20).json()
            if (body.get("supervisor") or {}).get("ready") and (body.get("ready") or not models):
                return dict(body)
            last = str(body)
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        time.sleep(2)
    raise TargetError(f"the appliance was not ready within {timeout_s:g} s (last: {last[:300]})")


def written_bytes(target: Target, partlabel: str) -> int:
    """Bytes written to a partition of the target since it booted (the kernel's block statistics)."""
    done = target.ssh(f"awk '{{print $7}}' /sys/class/block/$(basename $(readlink -f /dev/disk/by-partlabel/"
                      f"{partlabel}))/stat", timeout=60)
    return int(done.stdout.strip() or 0) * 512 if done.returncode == 0 else 0


def cut_while_writing(target: Target, partlabel: str, command: str, after_bytes: int = 256 << 20,
                      timeout_s: float = 600) -> subprocess.Popen[str]:
    """Start ``command`` on the target, cut the power once ``after_bytes`` have gone to ``partlabel`` (and the
    command is still running); the command's process, ended."""
    writer = target.ssh_background(command)
    deadline = time.monotonic() + timeout_s
    while written_bytes(target, partlabel) < after_bytes:
        if writer.poll() is not None or time.monotonic() > deadline:
            output = writer.stdout.read() if writer.stdout else ""
            writer.kill()
            raise TargetError(f"{command!r} wrote less than {after_bytes} bytes to {partlabel} before it ended "
                              f"or {timeout_s:g} s passed: {output[-500:]}")
        time.sleep(1)
    if writer.poll() is not None:
        raise TargetError(f"{command!r} finished before the power cut: nothing was tested")
    target.power_cut()
    writer.wait(30)
    return writer


class _Ssh:
    host: str
    port: int
    user: str
    key: Path

    def _args(self, command: str) -> list[str]:
        return ["ssh", *SSH_OPTIONS, "-i", str(self.key), "-p", str(self.port), f"{self.user}@{self.host}", command]

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._args(command), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def ssh_background(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self._args(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)

    def wait_ssh(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ssh("true", timeout=30).returncode == 0:
                return
            time.sleep(3)
        raise TargetError(f"no SSH to {self.host}:{self.port} within {timeout_s:g} s")


class QemuTarget(_Ssh):
    """An appliance image in QEMU; ``bundle`` (optional) is attached as /dev/vdb."""

    def __init__(self, image: Path, work: Path, bundle: Path | None = None, boot_s: float = 900,
                 memory_mib: int = 4096) -> None:
        # 4 GiB: every default model warm (with 2 GiB the memory guard sheds and the API answers 503)
        self.image, self.bundle, self.boot_s, self.memory_mib = image, bundle, boot_s, memory_mib
        self.host, self.user = "127.0.0.1", "root"
        self.key = work / "hil_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil", "-f", str(self.key)],
                           check=True, timeout=60)
        esp = firmware.open_image(image).esp
        if "authorized_keys" not in esp.list("appliance"):  # adopted (and removed) at first boot
            esp.write("appliance/authorized_keys", self.key.with_suffix(".pub").read_bytes())
        self.port = free_port()
        self.api_port, self.sip_port = free_port(), free_port()
        self.api, self.sip = f"http://127.0.0.1:{self.api_port}", ("127.0.0.1", self.sip_port)
        self.api_key = ""
        # QEMU's user-mode network carries the guest's RTP to the harness (10.0.2.2) only when not isolated:
        # allowed in a loopback-only namespace, where the harness is all the guest can reach.
        self.isolated = not loopback_only()
        self.media_host = "" if self.isolated else "10.0.2.2"
        self.guest: Guest | None = None
        self.boots: list[list[str]] = []  # every boot's console

    def power_on(self) -> None:
        args = command(self.image, forwards={self.api_port: 8080, self.sip_port: 5060, self.port: 22},
                       isolated=self.isolated, memory_mib=self.memory_mib)
        args = [a for a in args if a != "-no-reboot"]  # a rollback reboots by itself
        if self.bundle is not None:
            args += ["-drive", f"file={self.bundle},format=raw,if=virtio,readonly=on"]
        self.guest = Guest(args)
        self.boots.append(self.guest.lines)
        self.guest.wait_for("APPLIANCE-SLOT", self.boot_s)
        found = KEY_LINE.search("\n".join(self.guest.lines))
        if found:
            self.api_key = found.group(1)
        self.wait_ssh(120)

    def power_cut(self) -> None:
        if self.guest is not None:
            self.guest.kill()
            self.guest = None

    def bundle_path(self) -> str:
        if self.bundle is None:
            raise TargetError("this QEMU target was made without a bundle")
        return "/dev/vdb"

    def close(self) -> None:
        self.power_cut()


class SshTarget(_Ssh):
    """A real board running an appliance image."""

    def __init__(self, url: str, bundle: Path | None = None) -> None:
        found = re.fullmatch(r"ssh://(?:(?P<user>[^@]+)@)?(?P<host>[^:/]+)(?::(?P<port>\d+))?/?", url)
        if not found:
            raise TargetError(f"HIL_TARGET {url!r} is not ssh://[user@]host[:port]")
        self.user, self.host = found["user"] or "root", found["host"]
        self.port = int(found["port"] or 22)
        self.key = Path(os.environ.get("HIL_SSH_KEY", Path.home() / ".ssh" / "id_ed25519"))
        self.api = os.environ.get("HIL_API", f"http://{self.host}:8080")
        self.api_key = os.environ.get("HIL_API_KEY", "")
        self.sip = (self.host, int(os.environ.get("HIL_SIP_PORT", "5060")))
        self.media_host = os.environ.get("HIL_MEDIA_HOST") or address_towards(self.host)
        self.bundle = bundle
        self.cut = os.environ.get("HIL_POWER_CUT", "")

    def power_on(self) -> None:
        self.wait_ssh(600)

    def power_cut(self) -> None:
        if not self.cut:
            raise TargetError("no HIL_POWER_CUT command: this board's power cannot be cut by the harness")
        subprocess.run(shlex.split(self.cut), check=True, timeout=120)

    def bundle_path(self) -> str:
        if self.bundle is None:
            raise TargetError("no bundle given (HIL_BUNDLE)")
        dest = f"/var/tmp/{self.bundle.name}"
        subprocess.run(["scp", *SSH_OPTIONS, "-i", str(self.key), "-P", str(self.port), str(self.bundle),
                        f"{self.user}@{self.host}:{dest}"], check=True, timeout=3600)
        return dest

    def close(self) -> None:
        pass
