"""The supervisor against real peers: a bound NOTIFY_SOCKET (path and abstract; through systemd-python too), real
child processes killed with SIGKILL, real signals, a fake /proc and cgroup tree, the journal's wire format. No
voice models are loaded; the appliance's own services are in test_appliance_run.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.ports import free_port
from appliance.services.plan import plan
from appliance.supervisor import (
    GraphError,
    MemoryGuard,
    MemoryOptions,
    Notifier,
    ProcessService,
    RestartPolicy,
    ServiceSpec,
    ServiceState,
    Supervisor,
    SupervisorOptions,
    serve,
    start_order,
)
from appliance.supervisor.journal import NativeJournalHandler, encode_fields
from appliance.supervisor.memory import assess, read_memory
from appliance.supervisor.service import RestartTracker
from tests.support.supervision import (
    FAST,
    Factory,
    Fake,
    Listener,
    answers,
    notifier_for,
    tcp_server,
    until,
    wait_until,
)


# -- sd_notify ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True])
def test_notify_reaches_a_real_socket(abstract: bool) -> None:
    lst = Listener(abstract)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": lst.env_value})
        assert notifier.ready("api ready") and notifier.status("sip restarting") and notifier.watchdog()
        assert notifier.reloading() and notifier.stopping()
        wait_until(lambda: len(lst.messages) == 5, 2, "five datagrams")
        assert [m for _, m in lst.messages] == ["READY=1\nSTATUS=api ready", "STATUS=sip restarting", "WATCHDOG=1",
                                                "RELOADING=1", "STOPPING=1"]
    finally:
        lst.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_through_systemd_python_reaches_a_real_socket(abstract: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the process's own environment the notifier uses libsystemd's sd_notify (systemd-python, which
    `make` installs); the same datagrams arrive."""
    lst = Listener(abstract)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", lst.env_value)
        notifier = Notifier()
        assert notifier._library is not None, "systemd-python is not installed (pip install -e '.[systemd]')"
        assert notifier.ready("api ready") and notifier.watchdog() and notifier.stopping("draining 1 call")
        wait_until(lambda: len(lst.messages) == 3, 2, "three datagrams")
        assert [m for _, m in lst.messages] == ["READY=1\nSTATUS=api ready", "WATCHDOG=1",
                                                "STOPPING=1\nSTATUS=draining 1 call"]
    finally:
        lst.close()


def test_notify_is_a_no_op_without_systemd_and_reads_the_watchdog() -> None:
    assert not Notifier({}).ready() and Notifier({}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/socket"}).ready() is False  # never raises
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval() == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None


def test_ready_status_and_watchdog_pings_at_half_the_interval(listener: Listener) -> None:
    """WATCHDOG_USEC=0.4 s: pings every 0.2 s from the event loop; a blocked loop stops them."""
    factory = Factory(a=lambda: Fake("a"), b=lambda: Fake("b"))

    async def main() -> None:
        sup = Supervisor(factory, {"a": ((), 1), "b": (("a",), 1)}, notifier=notifier_for(listener, 400_000))
        await sup.start()
        await until(lambda: listener.fields("READY"), 3, "READY=1")
        await asyncio.sleep(1.5)
        time.sleep(0.7)  # the loop is blocked: no pings meanwhile
        await asyncio.sleep(0.3)
        await sup.stop()
        await until(lambda: listener.fields("STOPPING"), 3, "STOPPING=1")  # the receiving thread may lag behind

    asyncio.run(main())
    ready = [m for _, m in listener.messages if "READY=1" in m]
    assert ready == ["READY=1\nSTATUS=a ready, b ready"]
    pings = [t for t, _ in listener.fields("WATCHDOG")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    normal = [g for g in gaps if g < 0.5]
    print(f"\nwatchdog: {len(pings)} pings, mean gap {sum(normal) / len(normal):.3f} s, longest {max(gaps):.3f} s")
    assert 0.17 < sum(normal) / len(normal) < 0.25
    window = [t for t in pings if pings[0] <= t < pings[0] + 1.5]
    assert 7 <= len(window) <= 9  # 1.5 s / 0.2 s
    assert max(gaps) >= 0.65  # the blocked loop shows up as a missing ping, which is what systemd acts on


# -- restarts -----------------------------------------------------------------------------------------------------
def test_a_killed_child_is_restarted_and_serving_again() -> None:
    port = free_port()
    factory = Factory(echo=lambda: tcp_server("echo", port))
    measured: list[float] = []

    async def main() -> None:
        sup = Supervisor(factory, {"echo": ((), 1)}, SupervisorOptions(poll_s=0.01), notifier=Notifier({}))
        await sup.start()
        unit = sup.units["echo"]
        await until(lambda: unit.state is ServiceState.READY, 10, "echo ready")
        assert await asyncio.to_thread(answers, port)
        for _ in range(2):
            pid = unit.service.pid
            assert pid is not None
            start = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def replaced(old: int = pid) -> bool:
                return unit.state is ServiceState.READY and unit.service.pid not in (None, old)

            await until(replaced, 5, "a new echo process ready")
            assert await asyncio.to_thread(answers, port)
            measured.append(time.monotonic() - start)
        assert unit.restarts == 2 and "killed by signal SIGKILL" in (unit.last_error or "")
        last_pid = unit.service.pid
        await sup.stop()
        assert last_pid is not None and not _exists(last_pid)  # stop leaves no orphan

    asyncio.run(main())
    print(f"\nkill -9 -> serving again: {', '.join(f'{s:.3f} s' for s in measured)}")
    assert all(s < 1.0 for s in measured)  # backoff 0.25 s, then the child's start


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_crash_loop_fails_only_that_service(listener: Listener, tmp_path: Path) -> None:
    port = free_port()
    crasher = [sys.executable, "-c", "import sys; print('cannot open the sound card'); sys.exit(3)"]
    factory = Factory(web=lambda: tcp_server("web", port),
                      bad=lambda: ProcessService("bad", crasher, ready_line="never printed"),
                      after=lambda: Fake("after"))
    status_file = tmp_path / "status.json"
    options = SupervisorOptions(restart=FAST, status_file=status_file, status_refresh_s=0.1)

    async def main() -> None:
        sup = Supervisor(factory, {"web": ((), 1), "bad": ((), 1), "after": (("bad",), 1)}, options,
                         notifier_for(listener))
        await sup.start()
        bad = sup.units["bad"]
        took = await until(lambda: bad.state is ServiceState.FAILED, 10, "bad failed")
        await until(lambda: listener.fields("READY"), 2, "READY=1 once the others are ready")
        assert sup.units["web"].state is ServiceState.READY and await asyncio.to_thread(answers, port)
        assert sup.units["after"].state is ServiceState.FAILED  # its dependency never came up
        assert sup.units["after"].last_error == "dependency bad failed"
        assert bad.restarts == FAST.crash_limit - 1
        assert bad.last_error == "exited with code 3: cannot open the sound card"
        print(f"\ncrash loop detected in {took:.2f} s")
        await until(lambda: status_file.exists() and json.loads(status_file.read_text())["services"]["bad"]["state"]
                    == "failed", 2, "the status file")
        status = sup.status()
        assert status["services"]["web"]["ready"] and status["services"]["web"]["pid"]
        await sup.stop()

    asyncio.run(main())
    assert "web ready, bad failed (2 restarts), after failed" in [v for _, v in listener.fields("STATUS")]
    assert json.loads(status_file.read_text())["state"] == "stopped"


def test_an_in_process_crash_is_restarted_with_backoff() -> None:
    factory = Factory(svc=lambda: Fake("svc"))

    async def main() -> None:
        sup = Supervisor(factory, {"svc": ((), 1)}, SupervisorOptions(restart=FAST), Notifier({}))
        await sup.start()
        unit = sup.units["svc"]
        await until(lambda: unit.state is ServiceState.READY, 2, "ready")
        assert isinstance(unit.service, Fake)
        unit.service.crash.set()
        await until(lambda: unit.restarts == 1 and unit.state is ServiceState.READY, 2, "restarted")
        assert unit.last_error == "RuntimeError: boom"
        await sup.stop()

    asyncio.run(main())


def test_restart_tracker_backs_off_resets_and_gives_up() -> None:
    tracker = RestartTracker(RestartPolicy(backoff_initial_s=0.5, backoff_max_s=4, crash_limit=5, crash_window_s=60,
                                           reset_after_s=60))
    assert [tracker.failed(t, 1) for t in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 4.0]
    assert tracker.failed(4, 1) is None  # 5 failures within 60 s
    tracker = RestartTracker(RestartPolicy(backoff_initial_s=0.5, crash_limit=3, crash_window_s=10))
    assert [tracker.failed(t, 1) for t in (0, 20, 40)] == [0.5, 1.0, 2.0]  # spread out: never a loop
    assert tracker.failed(200, 120) == 0.5  # healthy for a while: back to the first delay


# -- SIGTERM: drain --------------------------------------------------------------------------------------------------
def test_sigterm_drains_a_live_call(listener: Listener) -> None:
    factory = Factory(phone=lambda: Fake("phone"))
    phone: list[Fake] = []

    async def main() -> None:
        sup = Supervisor(factory, {"phone": ((), 1)}, SupervisorOptions(grace_s=5), notifier_for(listener))
        served = asyncio.create_task(serve(sup, lambda: {"phone": ((), 1)}))
        await until(lambda: sup.ready_at is not None, 3, "ready")
        fake = factory.made["phone"][0]
        assert isinstance(fake, Fake)
        phone.append(fake)
        call = asyncio.Event()
        fake.calls.append(call)
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: listener.fields("STOPPING"), 2, "STOPPING=1")
        await asyncio.sleep(0.5)
        assert not served.done() and fake.refusing[-1] is True  # new calls get 503 while the live one goes on
        assert sup.units["phone"].state is ServiceState.READY
        ended = time.monotonic()
        call.set()  # the caller hangs up
        assert await served == 0
        print(f"\nstopped {time.monotonic() - ended:.3f} s after the last call ended")
        assert time.monotonic() - ended < 0.5

    asyncio.run(main())
    assert phone[0].hung_up == 0
    wait_until(lambda: listener.fields("STATUS")[-1][1] == "phone stopped", 2, "the final STATUS")
    statuses = [v for _, v in listener.fields("STATUS")]
    assert "draining 1 calls and sessions (up to 5 s)" in statuses  # with STOPPING=1
    assert "stopping, draining 1 calls and sessions: phone ready" in statuses and statuses[-1] == "phone stopped"


def test_the_drain_ends_at_the_grace_period() -> None:
    factory = Factory(phone=lambda: Fake("phone"))

    async def main() -> None:
        sup = Supervisor(factory, {"phone": ((), 1)}, SupervisorOptions(grace_s=0.4), Notifier({}))
        await sup.start()
        await until(lambda: sup.units["phone"].state is ServiceState.READY, 2, "ready")
        fake = factory.made["phone"][0]
        assert isinstance(fake, Fake)
        fake.calls.append(asyncio.Event())  # a call that never ends
        start = time.monotonic()
        await sup.stop()
        assert 0.4 <= time.monotonic() - start < 1.0
        assert fake.hung_up == 1 and sup.units["phone"].state is ServiceState.STOPPED

    asyncio.run(main())


# -- SIGHUP: reload --------------------------------------------------------------------------------------------------
def test_reload_reconfigures_restarts_adds_removes_and_resets() -> None:
    port = free_port()
    crasher = [sys.executable, "-c", "raise SystemExit(1)"]
    factory = Factory(a=lambda: Fake("a"), b=lambda: Fake("b"), c=lambda: Fake("c"), d=lambda: Fake("d"),
                      bad=lambda: ProcessService("bad", crasher, ready_line="never printed"),
                      web=lambda: tcp_server("web", port))

    async def main() -> None:
        first = {"a": ((), 1), "b": ((), 1), "c": ((), 1), "bad": ((), 1), "web": ((), 1)}
        sup = Supervisor(factory, first, SupervisorOptions(restart=FAST), Notifier({}))
        await sup.start()
        await until(lambda: sup.units["bad"].state is ServiceState.FAILED, 10, "bad failed")
        factory.builders["bad"] = lambda: Fake("bad")  # "the configuration was fixed"
        actions = await sup.reload({"a": ((), 1), "b": ((), 2), "d": ((), 1), "bad": ((), 1), "web": ((), 1)})
        assert actions == {"c": "removed", "a": "reconfigured", "b": "restarted", "d": "added", "bad": "reset",
                           "web": "reconfigured"}
        await until(lambda: all(u.state is ServiceState.READY for u in sup.units.values()), 5, "all ready")
        a = factory.made["a"]
        assert len(a) == 1 and isinstance(a[0], Fake) and a[0].reconfigured
        assert len(factory.made["b"]) == 2 and factory.made["c"][0].alive() is False
        assert len(factory.made["web"]) == 1 and await asyncio.to_thread(answers, port)  # not restarted
        assert await sup.reload({"x": (("y",), 1), "y": (("x",), 1)}) == {"error": "dependency cycle: x -> y -> x"}
        assert set(sup.units) == {"a", "b", "d", "bad", "web"}  # a bad graph changes nothing
        await sup.stop()

    asyncio.run(main())


# -- the graph --------------------------------------------------------------------------------------------------------
def test_start_order_puts_dependencies_first_and_names_a_cycle() -> None:
    specs = [ServiceSpec("fleet", ("api",)), ServiceSpec("api"), ServiceSpec("sip", ("api",))]
    assert [s.name for s in start_order(specs)] == ["api", "fleet", "sip"]
    with pytest.raises(GraphError, match="dependency cycle: a -> b -> c -> a"):
        start_order([ServiceSpec("a", ("b",)), ServiceSpec("b", ("c",)), ServiceSpec("c", ("a",))])
    with pytest.raises(GraphError, match="depends on 'nope'"):
        start_order([ServiceSpec("a", ("nope",))])


def test_plan_follows_the_settings() -> None:
    default = Settings()
    assert [s.name for s in plan(default)] == ["api", "sip"]
    assert [s.name for s in plan(Settings(sip={"enabled": False}))] == ["api"]
    keys = {s.name: s.key for s in plan(default)}
    live = {s.name: s.key for s in plan(Settings(sip={"max_calls": 2}, api={"rate_per_minute": 5}))}
    moved = {s.name: s.key for s in plan(Settings(sip={"port": 5070}))}
    assert live == keys and moved["sip"] != keys["sip"] and moved["api"] == keys["api"]


def test_only_runs_exactly_the_named_services_whatever_the_settings_enable() -> None:
    """`appliance run --only` (and the older `serve`, `sip serve`, `wyoming`, which are that now)."""
    off = Settings(sip={"enabled": False})
    assert [s.name for s in plan(off, ["wyoming"])] == ["wyoming"]  # wyoming.enabled is false by default
    assert [s.name for s in plan(off, ["sip", "api"])] == ["api", "sip"]
    with pytest.raises(GraphError, match="no service called 'fleet'; the services are api, sip, wyoming, agent"):
        plan(off, ["fleet", "api"])
    with pytest.raises(GraphError, match="no service named; the services are api, sip, wyoming, agent"):
        plan(off, [])


# -- memory ----------------------------------------------------------------------------------------------------------
def fake_tree(root: Path, psi: float, current: int | None = None, limit: str = "max",
              available_mb: int = 4000) -> MemoryOptions:
    proc, cg = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "cgroup").write_text("0::/system.slice/appliance.service\n")
    (proc / "meminfo").write_text(f"MemTotal: 8000000 kB\nMemAvailable: {available_mb * 1024} kB\n")
    folder = cg / "system.slice" / "appliance.service"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cgroup.controllers").write_text("memory\n")
    (folder / "memory.pressure").write_text(f"some avg10={psi:.2f} avg60=0.00 avg300=0.00 total=1\n"
                                            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    (folder / "memory.current").write_text(f"{current or 0}\n")
    (folder / "memory.max").write_text(f"{limit}\n")
    (folder / "memory.high").write_text("max\n")
    return MemoryOptions(proc=proc, cgroup_root=cg, interval_s=0.01)


def test_memory_guard_sheds_and_recovers_with_hysteresis(tmp_path: Path) -> None:
    events: list[str] = []

    async def main() -> None:
        guard = MemoryGuard(fake_tree(tmp_path, 0.0), shed=events.append, recover=lambda: events.append("ok"))
        assert not await guard.check()
        fake_tree(tmp_path, 55.0)
        assert await guard.check() and events == ["memory pressure 55% (some avg10)"]
        fake_tree(tmp_path, 20.0)  # under the high mark but over the low one: still shedding
        assert await guard.check() and len(events) == 1
        fake_tree(tmp_path, 5.0)
        assert not await guard.check() and events[-1] == "ok"
        options = fake_tree(tmp_path, 0.0, current=950 << 20, limit=str(1000 << 20))
        stat = options.cgroup_root / "system.slice" / "appliance.service" / "memory.stat"
        stat.write_text(f"anon {500 << 20}\nfile {450 << 20}\ninactive_file {400 << 20}\n")
        assert not await guard.check()  # 950 MB used, 400 MB of it a cold file cache: a working set of 55%
        stat.unlink()
        assert await guard.check() and events[-1] == "cgroup memory at 95% of its limit"
        fake_tree(tmp_path, 0.0, current=100 << 20, limit=str(1000 << 20), available_mb=100)
        assert await guard.check() and len(events) == 3  # still under pressure: MemAvailable is low now
        assert guard.reason == "only 100 MiB available"
        fake_tree(tmp_path, 0.0, current=100 << 20, limit=str(1000 << 20), available_mb=200)
        assert await guard.check()  # 200 MiB is over the 150 MiB floor but under the 300 MiB recovery mark
        fake_tree(tmp_path, 0.0, current=100 << 20, limit=str(1000 << 20), available_mb=400)
        assert not await guard.check() and events[-1] == "ok" and guard.sheds == 2

    asyncio.run(main())


def test_memory_readings_from_cgroup_v1_and_missing_files(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "pressure").mkdir()
    (proc / "self" / "cgroup").write_text("4:memory:/box\n0::/\n")
    (proc / "pressure" / "memory").write_text("some avg10=1.50 avg60=0.00 avg300=0.00 total=0\n")
    (cg / "memory" / "box").mkdir(parents=True)
    (cg / "memory" / "box" / "memory.usage_in_bytes").write_text("500\n")
    (cg / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # "no limit"
    reading = read_memory(MemoryOptions(proc=proc, cgroup_root=cg))
    assert (reading.psi_some_avg10, reading.current_bytes, reading.limit_bytes, reading.available_bytes) == \
        (1.5, 500, None, None)
    empty = read_memory(MemoryOptions(proc=tmp_path / "none", cgroup_root=tmp_path / "none"))
    assert assess(empty, MemoryOptions(), shedding=False) is None  # nothing to read: never shed


# -- the journal -------------------------------------------------------------------------------------------------------
def test_native_journal_handler_sends_structured_fields(tmp_path: Path) -> None:
    import logging

    path = Path(tempfile.mkdtemp(prefix="sj")) / "journal"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    handler = NativeJournalHandler("appliance-test", path)
    logger = logging.getLogger("appliance.test.journal")  # the handler itself: other tests' logging setups
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, "sip restarted", (), None,  # can't interfere
                               extra={"SERVICE": "sip", "lower": "not a field"})
    try:
        handler.handle(record)
        data = sock.recv(65536)
    finally:
        handler.close()
        sock.close()
    fields = dict(line.split("=", 1) for line in data.decode().splitlines())
    assert fields["MESSAGE"] == "sip restarted" and fields["PRIORITY"] == "4" and fields["SERVICE"] == "sip"
    assert fields["SYSLOG_IDENTIFIER"] == "appliance-test" and "lower" not in fields and "LOWER" not in fields
    assert encode_fields({"MESSAGE": "a\nb"}) == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"
