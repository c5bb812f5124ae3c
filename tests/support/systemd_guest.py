"""A Debian 12 guest with a real systemd as PID 1, booted by systemd-nspawn, for tests of the unit files.

``ensure_rootfs()`` debootstraps a minimal bookworm with systemd and python3 once into a cache folder
keyed by the suite and the package list (built in a temporary folder, then renamed). ``boot()`` starts it with
``--volatile=overlay`` (every boot starts from the pristine tree; nothing is written to the cache), its own
network namespace and the given read-only binds, and waits until the guest's systemd has finished booting.
``Guest.run()`` runs a command inside the guest through nsenter into the container's namespaces, so the test
drives the guest's systemctl and journalctl directly; no machined or D-Bus is needed on the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# systemd as PID 1; python3 runs the appliance's code. No procps: the unit must not need /bin/kill.
PACKAGES = ("systemd", "systemd-sysv", "python3")


def host_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses (so the guest comes from where `make system` got its packages)."""
    texts = [p.read_text(errors="replace") for p in sorted(sources.glob("sources.list.d/*.sources"))]
    for text in texts:
        for stanza in text.split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[:1].isalpha())
            uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "").split()
            if SUITE in suites and uris and "security" not in uris[0]:
                return uris[0]
    legacy = sources / "sources.list"
    for line in legacy.read_text(errors="replace").splitlines() if legacy.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and SUITE in words and "security" not in line:
            return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


MIRROR = os.environ.get("APPLIANCE_TEST_DEBIAN_MIRROR") or host_mirror()
CACHE = Path(os.environ.get("APPLIANCE_TEST_CACHE", "/var/cache/appliance-tests"))
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMPLETE = ".complete"


class GuestError(RuntimeError):
    """The guest could not be built or booted; the message carries the tool's own output."""


def rootfs_name(suite: str = SUITE, packages: Sequence[str] = PACKAGES) -> str:
    key = hashlib.sha256(f"{suite}:{','.join(sorted(packages))}".encode()).hexdigest()[:12]
    return f"{suite}-systemd-{key}"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) root tree; a killed debootstrap may leave /proc or /sys mounted in it."""
    for mount in _mounts_under(path):
        subprocess.run(["umount", "-l", mount], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def ensure_rootfs(cache: Path = CACHE, timeout_s: float = 420.0) -> Path:
    """The cached guest tree, debootstrapped first if it is not there yet."""
    path = cache / rootfs_name()
    if (path / COMPLETE).exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"  # downloaded packages, kept for the next build
    debs.mkdir(exist_ok=True)
    tmp = cache / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        _remove_tree(tmp)
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
               f"--cache-dir={debs}", SUITE, str(tmp), MIRROR]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        _remove_tree(tmp)
        raise GuestError(f"debootstrap took over {timeout_s:.0f} s: {' '.join(command)}") from exc
    if done.returncode != 0:
        log = (tmp / "debootstrap" / "debootstrap.log")
        detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        _remove_tree(tmp)
        raise GuestError(f"debootstrap failed ({done.returncode}): {' '.join(command)}\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}{detail}")
    (tmp / COMPLETE).touch()
    if path.exists():  # another run finished first
        _remove_tree(tmp)
    else:
        tmp.rename(path)
    return path


@dataclass(frozen=True)
class Bind:
    """A host path shown read-only in the guest (at the same path unless ``guest`` is given)."""

    host: Path
    guest: str | None = None

    def option(self) -> str:
        return f"--bind-ro={self.host}:{self.guest or self.host}"


@dataclass
class Guest:
    """A booted guest: the nspawn process, the guest's PID 1 (as seen from the host) and its console log."""

    process: subprocess.Popen[bytes]
    leader: int
    console: Path
    env: dict[str, str] = field(default_factory=lambda: {
        "PATH": GUEST_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})

    def run(self, *command: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the guest (its mount, PID, network, UTS and IPC namespaces)."""
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "-r", "-w", *command], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise GuestError(f"{' '.join(command)} exited {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` of some properties, as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def console_tail(self, chars: int = 4000) -> str:
        return self.console.read_text(errors="replace")[-chars:] if self.console.exists() else ""


def _leader(nspawn: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The guest's PID 1: nspawn's child once it runs systemd (None if nspawn exits first)."""
    while time.monotonic() < deadline and nspawn.poll() is None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                text = stat.read_text()
                comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
                if int(rest[1]) == nspawn.pid and comm == "systemd":
                    return int(stat.parent.name)
        time.sleep(0.1)
    return None


def _nspawn_unit_options() -> list[str]:
    """A host booted with systemd and D-Bus gives nspawn a scope of its own; elsewhere (a container whose PID 1
    is not systemd) nspawn stays in the caller's cgroup and talks to no bus."""
    if Path("/run/systemd/system").is_dir() and Path("/run/dbus/system_bus_socket").exists():
        return ["--register=no"]
    return ["--register=no", "--keep-unit"]


@contextlib.contextmanager
def boot(rootfs: Path, binds: Sequence[Bind], console: Path, name: str,
         boot_timeout_s: float = 90.0) -> Iterator[Guest]:
    """Boot the guest and yield it once `systemctl is-system-running --wait` answers; power it off after."""
    command = ["systemd-nspawn", "--quiet", f"--directory={rootfs}", f"--machine={name}",
               *_nspawn_unit_options(), "--private-network", "--volatile=overlay", "--console=read-only",
               *(bind.option() for bind in binds), "--boot"]
    with console.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + boot_timeout_s
    try:
        leader = _leader(process, deadline)
        if leader is None:
            raise GuestError(f"no systemd in the guest within {boot_timeout_s:.0f} s (nspawn "
                             f"{'exited ' + str(process.returncode) if process.poll() is not None else 'running'})"
                             f": {' '.join(command)}\n{console.read_text(errors='replace')[-4000:]}")
        guest = Guest(process, leader, console)
        state = ""
        while time.monotonic() < deadline:
            state = guest.run("systemctl", "is-system-running", "--wait", check=False,
                              timeout_s=max(1.0, deadline - time.monotonic())).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            raise GuestError(f"the guest did not finish booting in {boot_timeout_s:.0f} s (state {state!r})\n"
                             f"{guest.console_tail()}")
        if state == "degraded":  # not the appliance's doing (it is not started yet): say so, go on
            failed = guest.run("systemctl", "--failed", "--no-legend", check=False).stdout
            print(f"guest booted degraded; failed units:\n{failed}")
        yield guest
    finally:
        _power_off(process)


def _power_off(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM makes nspawn ask the guest's systemd to shut down; SIGKILL if it takes too long."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def namespaces_denied() -> str | None:
    """Why this host cannot give a container its own namespaces (a container run without CAP_SYS_ADMIN, or
    with user namespaces only), or None. A property of the host, checked before anything of ours runs."""
    done = subprocess.run(["unshare", "--mount", "--pid", "--uts", "--ipc", "--net", "--fork", "true"],
                          capture_output=True, text=True, timeout=30, check=False)
    return None if done.returncode == 0 else (done.stderr.strip() or f"unshare exited {done.returncode}")


def missing_tools() -> list[str]:
    return [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(tool) is None]
