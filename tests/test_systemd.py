"""The unit files under a real systemd: images/systemd/appliance.service, appliance.socket and appliance.sysusers in a
Debian 12
guest booted by systemd-nspawn (systemd 252 as PID 1), the appliance's code bound in read-only.

The guest's /opt/appliance/.venv is a venv of the guest's own python3 (3.11, as ours) that puts this checkout
(bound at /opt/appliance-src) first on sys.path and adds our venv's site-packages (bound at /opt/appliance-deps):
not at their host paths, which may be under /tmp or /home, hidden from the service by PrivateTmp and
ProtectHome. The model store is empty. The only change
to the unit is a drop-in with WatchdogSec=4, so that several watchdog periods pass in seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.systemd_guest import Bind, Guest, GuestError, boot, ensure_rootfs, missing_tools, namespaces_denied

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "images" / "systemd"
UNIT = "appliance.service"
SOCKET = "appliance.socket"
# Run in the guest once the killed process is gone: a GET on the API port and a SIP OPTIONS datagram, each answered
# (or not) by whatever serves next: the status lines and the seconds each took.
PROBE = """
import socket, time
t = time.monotonic()
api = socket.create_connection(("127.0.0.1", 8080), timeout=30)
api.sendall(b"GET /health HTTP/1.0\\r\\nHost: appliance\\r\\n\\r\\n")
sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sip.settimeout(30)
sip.bind(("127.0.0.1", 0))
sip.sendto(b"OPTIONS sip:probe@127.0.0.1 SIP/2.0\\r\\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-probe\\r\\n"
           b"Max-Forwards: 70\\r\\nFrom: <sip:probe@127.0.0.1>;tag=p\\r\\nTo: <sip:probe@127.0.0.1>\\r\\n"
           b"Call-ID: probe\\r\\nCSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n" % sip.getsockname()[1],
           ("127.0.0.1", 5060))
print(sip.recv(2000).split(b"\\r\\n")[0].decode(), round(time.monotonic() - t, 2))
print(api.recv(200).split(b"\\r\\n")[0].decode(), round(time.monotonic() - t, 2))
"""
GUEST_VENV = "/opt/appliance/.venv"
STATE = "/var/lib/appliance"
WATCHDOG_S = 4
CONFIG = """\
[models]
store = "/var/lib/appliance/models"
"""

if not sys.platform.startswith("linux") or os.geteuid() != 0:
    pytest.skip("systemd-nspawn needs root on Linux", allow_module_level=True)


SOURCE, DEPS = "/opt/appliance-src", "/opt/appliance-deps"  # where the guest sees this checkout and our packages
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def guest_venv(staging: Path) -> Path:
    """A venv of the guest's /usr/bin/python3.11: the checkout first on sys.path (before our editable install's
    finder, which points at the host path), then our site-packages (a .pth runs addsitedir), with our
    `appliance` entry point."""
    venv = staging / "venv"
    (venv / "bin").mkdir(parents=True)
    guest_site = venv / "lib" / "python3.11" / "site-packages"
    guest_site.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n")
    (venv / "bin" / "python3").symlink_to("/usr/bin/python3.11")
    (venv / "bin" / "python").symlink_to("python3")
    (guest_site / "appliance-checkout.pth").write_text(
        f"import site, sys; sys.path.insert(0, {SOURCE!r}); site.addsitedir({DEPS!r})\n")
    entry = (Path(sys.prefix) / "bin" / "appliance").read_text().split("\n", 1)[1]
    (venv / "bin" / "appliance").write_text(f"#!{GUEST_VENV}/bin/python3\n{entry}")
    (venv / "bin" / "appliance").chmod(0o755)
    for path in [venv, *venv.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path.name == "appliance" else 0o644)
    return venv


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    if missing := missing_tools():
        pytest.fail(f"missing {', '.join(missing)}: `make system` installs debootstrap and systemd-container")
    if denied := namespaces_denied():
        pytest.skip(f"this host cannot run a container (systemd-nspawn needs new namespaces): {denied}")
    if sys.version_info[:2] != (3, 11):
        pytest.fail(f"the guest's python3 is 3.11 (bookworm); this venv is {sys.version.split()[0]}")
    started = time.monotonic()
    try:
        rootfs = ensure_rootfs()
    except GuestError as exc:
        pytest.fail(str(exc))
    print(f"guest root tree {rootfs} ready in {time.monotonic() - started:.1f} s")
    staging = tmp_path_factory.mktemp("systemd-guest")
    staging.chmod(0o755)
    dropin = staging / "appliance.service.d"
    dropin.mkdir(mode=0o755)
    (dropin / "test-watchdog.conf").write_text(f"[Service]\nWatchdogSec={WATCHDOG_S}\n")
    (staging / "appliance.toml").write_text(CONFIG)
    binds = [Bind(UNITS / "appliance.service", f"/usr/lib/systemd/system/{UNIT}"),
             Bind(UNITS / "appliance.socket", f"/usr/lib/systemd/system/{SOCKET}"),
             Bind(UNITS / "appliance.sysusers", "/usr/lib/sysusers.d/appliance.conf"),
             Bind(dropin, f"/etc/systemd/system/{UNIT}.d"),
             Bind(staging / "appliance.toml", "/etc/appliance/appliance.toml"),
             Bind(guest_venv(staging), GUEST_VENV),
             Bind(ROOT, SOURCE),
             Bind(SITE, DEPS)]
    started = time.monotonic()
    try:
        with boot(rootfs, binds, staging / "console.log", f"appliance-test-{os.getpid()}") as booted:
            print(f"guest booted in {time.monotonic() - started:.1f} s")
            yield booted
    except GuestError as exc:
        pytest.fail(str(exc))


def state(guest: Guest) -> dict[str, str]:
    return guest.show(UNIT, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText",
                      "ActiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic")


def journal(guest: Guest) -> str:
    return guest.run("journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic", "-n", "60",
                     check=False).stdout


def started(guest: Guest) -> dict[str, str]:
    """The unit active (started if it is not), as `systemctl show` sees it."""
    now = state(guest)
    if now["ActiveState"] != "active":
        guest.run("systemctl", "reset-failed", UNIT, check=False)
        done = guest.run("systemctl", "start", UNIT, check=False, timeout_s=90)
        assert done.returncode == 0, f"systemctl start: {done.stderr}\n{journal(guest)}"
        now = state(guest)
    return now


def wait_for(guest: Guest, what: str, predicate: Callable[[dict[str, str]], bool],
             deadline_s: float) -> tuple[dict[str, str], float]:
    """Poll the unit's state until ``predicate`` holds: (that state, seconds it took)."""
    start = time.monotonic()
    while True:
        now = state(guest)
        if predicate(now):
            return now, time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"not {what} after {deadline_s} s: {now}\n{journal(guest)}")
        time.sleep(0.05)


def test_start_returns_after_ready_as_the_sysusers_user(guest: Guest) -> None:
    before = state(guest)
    assert before["ActiveState"] == "inactive", before  # not enabled: only started here
    t0 = time.monotonic()
    done = guest.run("systemctl", "start", UNIT, check=False, timeout_s=90)
    took = time.monotonic() - t0
    assert done.returncode == 0, f"systemctl start failed: {done.stderr}\n{journal(guest)}"
    # Type=notify: start returns only once READY=1 came, so the unit is already active, not activating.
    now = state(guest)
    assert now["ActiveState"] == "active" and now["SubState"] == "running", now
    exec_to_ready = (int(now["ActiveEnterTimestampMonotonic"]) - int(now["ExecMainStartTimestampMonotonic"])) / 1e6
    print(f"systemctl start -> active: {took:.2f} s (exec -> READY=1 {exec_to_ready:.2f} s)")
    assert "api ready" in now["StatusText"], now["StatusText"]

    pid = now["MainPID"]
    uid = guest.run("id", "-u", "appliance").stdout.strip()
    assert 0 < int(uid) < 1000, uid  # a system user made by systemd-sysusers from appliance.sysusers
    proc = dict(line.split(":\t", 1) for line in guest.run("cat", f"/proc/{pid}/status").stdout.splitlines()
                if ":\t" in line)
    assert proc["Uid"].split()[:2] == [uid, uid] and proc["Gid"].split()[0] == uid, proc["Uid"]
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0, proc  # CapabilityBoundingSet=
    assert proc["NoNewPrivs"].strip() == "1"
    assert proc["Seccomp"].strip() == "2"  # SystemCallFilter=

    owner = guest.run("stat", "-c", "%U %a", STATE, f"{STATE}/status.json").stdout.split("\n")
    assert owner[0] == "appliance 750", owner  # StateDirectory=, StateDirectoryMode=0750
    assert owner[1].startswith("appliance "), owner
    status = guest.run(f"{GUEST_VENV}/bin/appliance", "--config", "/etc/appliance/appliance.toml", "status",
                       "--json", "--state-dir", STATE, check=False)
    assert status.returncode == 0, f"appliance status exited {status.returncode}: {status.stdout}{status.stderr}"
    report = json.loads(status.stdout)
    assert report["state"] == "running" and report["alive"] and str(report["pid"]) == pid, report


def test_watchdog_pings_keep_it_running(guest: Guest) -> None:
    now = started(guest)
    assert guest.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == f"{WATCHDOG_S}s"
    pings: set[str] = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5 * WATCHDOG_S:  # several periods: a missed ping would kill it (SIGABRT)
        seen = guest.show(UNIT, "WatchdogTimestampMonotonic", "ActiveState", "MainPID")
        assert seen["ActiveState"] == "active" and seen["MainPID"] == now["MainPID"], seen
        pings.add(seen["WatchdogTimestampMonotonic"])
        time.sleep(0.5)
    after = state(guest)
    assert after["NRestarts"] == now["NRestarts"], after
    assert len(pings - {"0"}) >= 4, f"WATCHDOG=1 not seen every {WATCHDOG_S / 2} s: {sorted(pings)}"
    print(f"watchdog: {len(pings)} distinct WATCHDOG=1 timestamps over {2.5 * WATCHDOG_S:.0f} s, "
          f"still pid {after['MainPID']}")


def restarted(guest: Guest, before: dict[str, str]) -> tuple[dict[str, str], float]:
    """Until systemd has restarted the unit once more and it is active under a new pid."""
    restarts = int(before["NRestarts"]) + 1
    return wait_for(guest, f"restarted ({restarts}) and active with a new pid",
                    lambda s: s["ActiveState"] == "active" and int(s["NRestarts"]) == restarts
                    and s["MainPID"] not in ("0", before["MainPID"]), 60)


def test_a_frozen_process_is_killed_by_the_watchdog_and_restarted(guest: Guest) -> None:
    now = started(guest)
    t0 = time.monotonic()
    guest.run("sh", "-c", f"kill -STOP {now['MainPID']}")  # no more WATCHDOG=1
    try:
        _, waited = wait_for(guest, "a watchdog timeout", lambda s: s["Result"] == "watchdog", WATCHDOG_S + 10)
    finally:
        guest.run("sh", "-c", f"kill -CONT {now['MainPID']}", check=False)  # lets the pending SIGABRT end it
    after, _ = restarted(guest, now)
    print(f"watchdog: SIGSTOP -> timeout noticed {waited:.2f} s (WatchdogSec={WATCHDOG_S}), "
          f"-> active again {time.monotonic() - t0:.2f} s after the SIGSTOP")
    assert "api ready" in after["StatusText"], after
    assert "Watchdog timeout" in journal(guest)


def test_reload_keeps_the_main_pid(guest: Guest) -> None:
    now = started(guest)
    done = guest.run("systemctl", "reload", UNIT, check=False)
    assert done.returncode == 0, f"systemctl reload: {done.stderr}\n{journal(guest)}"
    after, _ = wait_for(guest, "active and ready again",
                        lambda s: s["ActiveState"] == "active" and "api ready" in s["StatusText"], 15)
    assert after["MainPID"] == now["MainPID"] and after["NRestarts"] == now["NRestarts"], (now, after)


def test_kill_9_is_restarted_by_systemd(guest: Guest) -> None:
    now = started(guest)
    t0 = time.monotonic_ns() // 1000
    guest.run("sh", "-c", f"kill -9 {now['MainPID']}")
    after, polled = restarted(guest, now)
    # the host and the guest share CLOCK_MONOTONIC (no time namespace)
    print(f"kill -9 -> active again: {(int(after['ActiveEnterTimestampMonotonic']) - t0) / 1e6:.2f} s "
          f"(polled {polled:.2f} s; pid {now['MainPID']} -> {after['MainPID']}, NRestarts {after['NRestarts']})")
    assert "api ready" in after["StatusText"], after


def test_kill_9_keeps_the_ports_open(guest: Guest) -> None:
    """appliance.socket holds 8080/tcp and 5060/udp: what arrives while no process runs waits for the next."""
    now = started(guest)
    assert guest.show(SOCKET, "ActiveState")["ActiveState"] == "active"  # pulled in by the service's Wants=
    pid = now["MainPID"]
    sent = guest.run("sh", "-c", f"kill -9 {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.01; done; "
                     f"exec python3 -c '{PROBE}'", check=False, timeout_s=60)
    after, _ = restarted(guest, now)
    assert sent.returncode == 0, f"{sent.stdout}{sent.stderr}\n{journal(guest)}"
    sip, api = sent.stdout.splitlines()
    assert sip.startswith("SIP/2.0 200 OK ") and api.startswith("HTTP/1.1 200 OK "), sent.stdout
    print(f"sent once the killed process was gone (RestartSec=100ms, then the new one's start): SIP OPTIONS "
          f"answered after {sip.split()[-1]} s, GET /health after {api.split()[-1]} s")
    assert "api ready" in after["StatusText"] and "no service listens on" not in journal(guest)


def test_journal_has_structured_fields(guest: Guest) -> None:
    started(guest)
    out = guest.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    services = {r["SERVICE"] for r in records if "SERVICE" in r}
    assert "api" in services, f"no SERVICE=api among {len(records)} records: {services}"
    # written by systemd-python's JournalHandler (make installs it), which adds PROCESS_NAME; our fallback does not
    assert all("PROCESS_NAME" in r and r.get("SYSLOG_IDENTIFIER") == "appliance" for r in records if "SERVICE" in r)
    filtered = guest.run("journalctl", "-u", UNIT, "SERVICE=sip", "-o", "cat", "--no-pager").stdout
    assert "sip" in filtered, filtered


def test_stop_is_clean(guest: Guest) -> None:
    started(guest)
    t0 = time.monotonic()
    done = guest.run("systemctl", "stop", UNIT, check=False, timeout_s=90)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    after = guest.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "TimeoutStopUSec")
    print(f"systemctl stop: {took:.2f} s; {after}")
    assert after["ActiveState"] == "inactive" and after["Result"] == "success", f"{after}\n{journal(guest)}"
    assert after["ExecMainStatus"] == "0", after
    assert took < 45, after  # TimeoutStopSec=45: stopped by itself, not killed


def test_the_guest_comes_from_the_hosts_debian_mirror(tmp_path: Path) -> None:
    from tests.support.systemd_guest import host_mirror

    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment: here\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert host_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb http://security.debian.org/ bookworm-security main\n"
                                           "deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert host_mirror(tmp_path) == "http://old.example/debian"
    (tmp_path / "sources.list").unlink()
    assert host_mirror(tmp_path) == "http://deb.debian.org/debian"
