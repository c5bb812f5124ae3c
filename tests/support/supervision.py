"""Helpers of the supervisor tests: a real notify socket (systemd's side), a tiny TCP server to run as a child,
an in-process service the test drives, a service factory, and waits with timeouts."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.supervisor import Notifier, ProcessService, RestartPolicy, Service, ServiceSpec, TaskService

ROOT = Path(__file__).resolve().parents[2]
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
