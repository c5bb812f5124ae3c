"""The supervisor against real peers: a bound NOTIFY_SOCKET (path and abstract), real child processes killed
with SIGKILL, real signals, a fake /proc and cgroup tree, and `appliance.cli.run_cmd` in a subprocess
reloading its configuration file on SIGHUP. No voice models are loaded."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.supervisor import (
    GraphError,
    MemoryGuard,
    MemoryOptions,
    Notifier,
    ProcessService,
    RestartPolicy,
    Service,
    ServiceSpec,
    ServiceState,
    Supervisor,
    SupervisorOptions,
    TaskService,
    plan,
    serve,
    start_order,
)
from appliance.supervisor.journal import NativeJournalHandler, encode_fields
from appliance.supervisor.memory import assess, read_memory
from appliance.supervisor.service import RestartTracker

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello\\n")
    c.close()
"""
FAST = RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, crash_limit=3, crash_window_s=30, ready_timeout_s=10)


# -- helpers ----------------------------------------------------------------------------------------------------
class Listener:
    """A bound AF_UNIX datagram socket playing systemd's notify socket; messages timestamped on arrival."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"appliance-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="sv")  # short: sun_path holds 108 bytes
            self.env_value = os.path.join(self.dir, "notify")
            self.sock.bind(self.env_value)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._done = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self, key: str) -> list[tuple[float, str]]:
        return [(t, line.partition("=")[2]) for t, m in list(self.messages) for line in m.split("\n")
                if line.startswith(key + "=")]

    def close(self) -> None:
        self._done = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener(abstract=True)
    yield lst
    lst.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll on the loop; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            return conn.recv(16) == b"hello\n"
    except OSError:
        return False


def tcp_server(name: str, port: int) -> ProcessService:
    return ProcessService(name, [sys.executable, "-c", SERVER, str(port)], ready_tcp=("127.0.0.1", port))


class Fake(TaskService):
    """An in-process service whose life the test controls: calls it holds, a crash on demand."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[asyncio.Event] = []
        self.refusing: list[bool] = []
        self.reconfigured: list[Any] = []
        self.hung_up = 0
        self.crash = asyncio.Event()
        self._quit = asyncio.Event()

    async def run(self) -> None:
        self.crash.clear()
        self.set_ready()
        crash = asyncio.ensure_future(self.crash.wait())
        quit_ = asyncio.ensure_future(self._quit.wait())
        try:
            await asyncio.wait({crash, quit_}, return_when=asyncio.FIRST_COMPLETED)
            if self.crash.is_set():
                raise RuntimeError("boom")
        finally:
            crash.cancel()
            quit_.cancel()
            self.hung_up += self.live()

    async def shutdown(self) -> None:
        self._quit.set()

    def live(self) -> int:
        return sum(not c.is_set() for c in self.calls)

    def refuse(self, refusing: bool) -> None:
        self.refusing.append(refusing)

    async def reconfigure(self, settings: Any) -> None:
        self.reconfigured.append(settings)


class Factory:
    """Settings are {name: (depends_on, key)}; services come from builders by name."""

    def __init__(self, **builders: Callable[[], Service]) -> None:
        self.builders = builders
        self.made: dict[str, list[Service]] = {name: [] for name in builders}

    def plan(self, settings: dict[str, tuple[tuple[str, ...], Any]]) -> list[ServiceSpec]:
        return [ServiceSpec(name, deps, key) for name, (deps, key) in settings.items()]

    def make(self, spec: ServiceSpec, settings: Any) -> Service:
        service = self.builders[spec.name]()
        self.made[spec.name].append(service)
        return service


def notifier_for(listener: Listener, watchdog_usec: int | None = None) -> Notifier:
    env = {"NOTIFY_SOCKET": listener.env_value}
    if watchdog_usec:
        env |= {"WATCHDOG_USEC": str(watchdog_usec), "WATCHDOG_PID": str(os.getpid())}
    return Notifier(env)


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
    assert listener.fields("STOPPING")


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


def test_sighup_applies_a_changed_setting_to_the_running_appliance(listener: Listener, tmp_path: Path) -> None:
    """`appliance.cli.run_cmd.run` in a subprocess (empty model store: no models): SIGHUP with a changed
    sip.max_calls and api.rate_per_minute applies both without restarting the phone; SIGTERM exits 0."""
    config, state = tmp_path / "appliance.toml", tmp_path / "state"

    def write(max_calls: int, rate: int) -> None:
        config.write_text(f"""
[models]
store = "{tmp_path / 'store'}"
[api]
host = "127.0.0.1"
port = 0
rate_per_minute = {rate}
[sip]
host = "127.0.0.1"
port = 0
max_calls = {max_calls}
[bot]
records_dir = "{tmp_path / 'calls'}"
""")

    write(8, 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "2000000", "PYTHONPATH": str(ROOT)}
    code = "import asyncio, sys; from pathlib import Path; from appliance.cli.run_cmd import run; " \
           "sys.exit(asyncio.run(run(Path(sys.argv[1]), Path(sys.argv[2]))))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(config), str(state)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status_file = state / "status.json"

    def status() -> dict[str, Any]:
        try:
            return dict(json.loads(status_file.read_text()))
        except (OSError, ValueError):
            return {}

    try:
        start = time.monotonic()
        wait_until(lambda: listener.fields("READY") or proc.poll() is not None, 30, "READY=1")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        print(f"\nboot -> READY=1: {listener.fields('READY')[0][0] - start:.2f} s (including Python imports)")
        first = wait_until(lambda: (s := status()).get("services", {}).get("sip", {}).get("max_calls") and s, 5,
                           "sip in the status file")
        assert first["services"]["sip"]["max_calls"] == 8 and first["state"] == "running"
        api_port = int(first["services"]["api"]["listen"].rsplit(":", 1)[1])
        health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5).json()
        assert health["supervisor"]["services"]["sip"] == "ready"  # states only: no key sent
        assert health["ready"] is True  # the empty stack warms at once
        write(3, 7)
        proc.send_signal(signal.SIGHUP)
        after = wait_until(lambda: (s := status())["services"]["sip"].get("max_calls") == 3 and s, 10,
                           "the new sip.max_calls")
        assert after["services"]["api"]["rate_per_minute"] == 7
        assert after["services"]["sip"]["since"] == first["services"]["sip"]["since"]  # not restarted
        assert after["services"]["sip"]["listen"] == first["services"]["sip"]["listen"]
        assert listener.fields("RELOADING") and len(listener.fields("READY")) == 2
        assert listener.fields("WATCHDOG")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert listener.fields("STOPPING") and status()["state"] == "stopped"
        output = proc.stdout.read() if proc.stdout else ""
        assert output.count("the appliance is ready") == 1, output  # once, not again after the reload
        assert f"kiosk page   http://127.0.0.1:{api_port}/kiosk" in output
        assert f"sip:<number>@{first['services']['sip']['listen']}" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_the_models_load_exits_at_once_and_cleanly(listener: Listener, tmp_path: Path,
                                                                 store: Any) -> None:
    """`appliance run` with every model of the store: SIGTERM after READY=1 but before the models are warm ends
    it with code 0 without waiting for the load (seconds) and without the abort an interpreter teardown under a
    loading runtime gives (ONNX Runtime: "terminate called", SIGABRT)."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{store.root}"\n[api]\nhost = "127.0.0.1"\nport = 0\n'
                      f'keys_file = "{tmp_path / "keys.json"}"\n[sip]\nhost = "127.0.0.1"\nport = 0\n'
                      f'[bot]\nrecords_dir = "{tmp_path / "calls"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"NOTIFY_SOCKET": listener.env_value, "STATE_DIRECTORY": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config), "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: listener.fields("READY") or proc.poll() is not None, 60, "READY=1")
        assert proc.poll() is None and "models warming" in listener.fields("STATUS")[-1][1]
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopping
        output = proc.stdout.read() if proc.stdout else ""
        assert code == 0 and "terminate called" not in output, output[-2000:]
        assert "models ready" not in " ".join(text for _, text in listener.fields("STATUS")), "warm before SIGTERM"
        assert took < 5, took  # the store's models take ~8 s more to load here: a stop that waited takes that
        print(f"\nSIGTERM while the models load -> exit {code} in {took:.2f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the appliance's own services -----------------------------------------------------------------------------------
def test_the_api_gate_refuses_new_work_and_adds_the_supervisor_to_health(tmp_path: Path) -> None:
    """/health: every service's state for anyone; pids, addresses, memory and errors only with a valid key."""
    from appliance.api.keys import KeyStore
    from appliance.cli.services import Gate

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    refusing = [False]
    keys = KeyStore(tmp_path / "keys.json")
    (_, token), (revoked, old) = keys.create("ops"), keys.create("old")
    keys.revoke(revoked.id)
    services: Any = SimpleNamespace(stack=None, warm_error=None, keys=keys)
    view = {"state": "running", "ready": True, "pid": 42, "memory": {"current_bytes": 1},
            "services": {"sip": {"state": "ready", "pid": None, "listen": "0.0.0.0:5060", "last_error": "x"}}}
    gate = Gate(inner, services, lambda: refusing[0], lambda: view)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://device") as client:
            public = {"state": "running", "ready": True, "services": {"sip": "ready"}}
            health = (await client.get("/health")).json()
            assert health == {"status": "ok", "ready": False, "error": None, "supervisor": public}
            for wrong in (old, "appliance_nope_nope", ""):
                headers = {"authorization": f"Bearer {wrong}"}
                assert (await client.get("/health", headers=headers)).json()["supervisor"] == public
            full = (await client.get("/health", headers={"authorization": f"Bearer {token}"})).json()
            assert full["supervisor"] == view
            assert (await client.post("/v1/audio/speech")).text == "inner"
            refusing[0] = True
            refused = await client.post("/v1/audio/speech")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
            assert refused.json()["error"]["code"] == "unavailable"
            assert (await client.get("/v1/models")).text == "inner"  # reading still works

    asyncio.run(main())


def test_a_real_appliance_child_comes_back_after_kill_9_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`appliance wyoming` (empty model store) as a ProcessService: ready when its STT port accepts, restarted after
    kill -9, and ended by the default SIGTERM (both of its servers under one handler)."""
    stt, tts = free_port(), free_port()
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{tmp_path / "store"}"\n[wyoming]\nstt_uri = "tcp://127.0.0.1:{stt}"\n'
                      f'tts_uri = "tcp://127.0.0.1:{tts}"\n')
    argv = [sys.executable, "-m", "appliance", "--config", str(config), "wyoming"]
    factory = Factory(wyoming=lambda: ProcessService("wyoming", argv, ready_tcp=("127.0.0.1", stt)))
    timings: dict[str, float] = {}

    async def main() -> None:
        sup = Supervisor(factory, {"wyoming": ((), 1)}, SupervisorOptions(poll_s=0.02), Notifier({}))
        await sup.start()
        unit = sup.units["wyoming"]
        timings["start"] = await until(lambda: unit.state is ServiceState.READY, 30, "wyoming ready")
        pid = unit.service.pid
        assert pid is not None and unit.service.health()["listen"] == f"127.0.0.1:{stt}"
        os.kill(pid, signal.SIGKILL)
        timings["kill -9"] = await until(lambda: unit.state is ServiceState.READY and unit.service.pid != pid, 30,
                                         "wyoming back")
        second = unit.service
        stopping = time.monotonic()
        await sup.stop()
        timings["stop"] = time.monotonic() - stopping
        assert second.health()["exit_code"] == 0  # SIGTERM ended it cleanly, no SIGKILL after the grace

    asyncio.run(main())
    print(f"\nappliance child: ready in {timings['start']:.2f} s, serving again {timings['kill -9']:.2f} s after "
          f"kill -9, stopped in {timings['stop']:.2f} s")


def test_wyoming_serves_the_shared_models_and_waits_for_them_while_they_warm() -> None:
    """WyomingTask listens before the models are warm: a Describe that comes meanwhile waits and is answered once
    they are; when they failed to load, the client gets an Error saying so. A crashed server task comes back."""

    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    from appliance.cli.services import Models, WyomingTask
    from appliance.config.settings import WyomingSettings

    stt, tts = free_port(), free_port()
    settings = Settings(wyoming=WyomingSettings(enabled=True, stt_uri=f"tcp://127.0.0.1:{stt}",
                                                tts_uri=f"tcp://127.0.0.1:{tts}"))
    loaded = threading.Event()

    def build() -> Any:
        assert loaded.wait(10)
        return SimpleNamespace(asr={}, voices={})

    async def describe() -> Any:
        async with asyncio.timeout(10), AsyncTcpClient("127.0.0.1", stt) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    def broken() -> Any:
        raise ApplianceError("no runtime could run whisper-tiny-en")

    async def main() -> None:
        models = Models(build)
        factory = Factory(wyoming=lambda: WyomingTask(settings, models))
        sup = Supervisor(factory, {"wyoming": ((), 1)}, SupervisorOptions(poll_s=0.02), Notifier({}))
        warm = asyncio.create_task(models.warm())
        await sup.start()
        unit = sup.units["wyoming"]
        await until(lambda: unit.state is ServiceState.READY, 10, "wyoming ready")
        assert not models.stack  # ready before the models
        asking = asyncio.create_task(describe())
        await asyncio.sleep(0.3)
        assert not asking.done()  # waiting for the models
        loaded.set()
        assert Info.is_type((await asking).type)
        await warm
        first = unit.service
        assert isinstance(first, WyomingTask) and first.servers is not None
        first._stop.set()  # run() returns without being asked to: a crash, as far as the supervisor can tell
        await until(lambda: unit.state is ServiceState.READY and unit.restarts == 1, 10, "wyoming back")
        assert Info.is_type((await describe()).type)
        await sup.stop()

        failed = Models(broken)
        await failed.warm()
        task = WyomingTask(settings, failed)
        await task.start()
        await until(lambda: task._ready.is_set(), 10, "wyoming ready")
        event = await describe()
        assert event.type == "error" and "could not be loaded: no runtime" in event.data["text"]
        assert event.data["code"] == "models-unavailable"
        await task.stop(1.0)

    asyncio.run(main())


def test_the_phone_turns_new_calls_away_while_refusing() -> None:
    from appliance.bot.calls import CallInfo, NotReady
    from appliance.cli.services import Models, SipTask

    services: Any = SimpleNamespace(sip=None)
    task = SipTask(Settings(), Models(lambda: pytest.fail("no models here")), services)
    task.refuse(True)
    with pytest.raises(NotReady, match="stopping or short of memory"):
        task._route(CallInfo("call-1", "sip:caller@example.com", "100"))


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
        fake_tree(tmp_path, 0.0, current=950 << 20, limit=str(1000 << 20))
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
