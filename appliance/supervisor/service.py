"""What the supervisor runs: a `Service` is started, probed until ready, awaited until it ends, and stopped.

Two kinds: a `TaskService` is a coroutine on the supervisor's own event loop (the HTTP API, the phone, the Wyoming
servers: they share one copy of the models); a `ProcessService` is a child process, for work that must not share
the supervisor's fate (a vendor runtime that may crash, the fleet agent), ready when its TCP port accepts or when
it prints a given line, and noticed dead the moment its wait() returns. `RestartPolicy` says how a service that ended on
its own is started again: exponential backoff, reset after a healthy stretch, and a crash-loop limit after
which the service stays failed until the configuration is reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)


class ServiceError(ApplianceError):
    """A service could not start or ended on its own; the message says how."""


class ServiceState(enum.StrEnum):
    PENDING = "pending"  # waiting for its dependencies
    STARTING = "starting"  # started, not ready yet
    READY = "ready"
    RESTARTING = "restarting"  # ended on its own; backing off before the next start
    FAILED = "failed"  # crash loop (or a failed dependency): not started again until a reload
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    """How a service that ended on its own comes back."""

    backoff_initial_s: float = 0.25  # delay before the first restart
    backoff_factor: float = 2.0  # each further failure multiplies the delay...
    backoff_max_s: float = 30.0  # ...up to this
    reset_after_s: float = 60.0  # ready this long: the next failure starts from backoff_initial_s again
    crash_limit: int = 5  # this many failures...
    crash_window_s: float = 60.0  # ...within this window mark the service failed
    ready_timeout_s: float = 30.0  # started but not ready after this long counts as a failure


@dataclass
class RestartTracker:
    """The failure history of one service: the delay before its next start, or None when it crash-loops."""

    policy: RestartPolicy
    failures: deque[float] = field(default_factory=deque)
    next_delay_s: float = -1.0

    def __post_init__(self) -> None:
        self.next_delay_s = self.policy.backoff_initial_s

    def failed(self, now: float, healthy_for_s: float) -> float | None:
        p = self.policy
        if healthy_for_s >= p.reset_after_s:
            self.next_delay_s = p.backoff_initial_s
        self.failures.append(now)
        while self.failures and self.failures[0] < now - p.crash_window_s:
            self.failures.popleft()
        if len(self.failures) >= p.crash_limit:
            return None
        delay = self.next_delay_s
        self.next_delay_s = min(delay * p.backoff_factor, p.backoff_max_s)
        return delay


class Service(ABC):
    """One supervised unit. The supervisor calls start(), polls ready() until True (while alive(), with settle()
    between probes), then awaits wait(), which returns a reason (or raises) when the service ended on its own.
    stop(grace_s) ends it and is idempotent: the supervisor also calls it after a crash to release whatever is
    left."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def ready(self) -> bool: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def wait(self) -> str: ...

    @abstractmethod
    async def stop(self, grace_s: float) -> None: ...

    async def settle(self, poll_s: float) -> None:
        """Between two ready() probes: returns when the answer may have changed (by default, after poll_s)."""
        await asyncio.sleep(poll_s)

    @property
    def pid(self) -> int | None:
        return None

    def live(self) -> int:
        """Calls or sessions in progress: a drain waits for them to end."""
        return 0

    def refuse(self, refusing: bool) -> None:
        """Turn new calls and sessions away (503) while True: draining or memory pressure."""
        return None

    async def reconfigure(self, settings: Any) -> None:
        """Apply settings that can change while running (the structural ones restart the service instead)."""
        return None

    def health(self) -> dict[str, Any]:
        """Facts for /health and `appliance status` beyond the supervisor's own (port, calls, …)."""
        return {}


class TaskService(Service):
    """A coroutine on the supervisor's loop. Subclasses implement run() (call set_ready() once serving; return
    or raise to end) and, for a graceful stop, shutdown() (ask run() to return). Whatever has not returned
    when the grace is over is cancelled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @abstractmethod
    async def run(self) -> None: ...

    async def shutdown(self) -> None:
        """Ask run() to return; the default lets stop() cancel it."""

    def set_ready(self) -> None:
        self._ready.set()

    async def _main(self) -> None:
        try:
            await self.run()
        except SystemExit as exc:  # e.g. uvicorn's exit on a failed start-up: must not end the whole loop
            raise ServiceError(f"exited ({exc.code})") from None
        finally:
            self._ready.clear()

    async def start(self) -> None:
        self._ready.clear()
        self._task = asyncio.create_task(self._main(), name=f"service-{self.name}")

    async def ready(self) -> bool:
        return self._ready.is_set()

    async def settle(self, poll_s: float) -> None:
        """Returns as soon as run() calls set_ready() or ends (no polling delay on the start-up path)."""
        if self._task is None:
            return await super().settle(poll_s)
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._task}, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self) -> str:
        if self._task is None:
            raise ServiceError("not started")
        await asyncio.wait({self._task})  # unlike awaiting the task, being cancelled here leaves it running
        if self._task.cancelled():
            return "cancelled"
        exc = self._task.exception()
        if exc is not None:
            raise exc
        return "returned"

    async def stop(self, grace_s: float) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(grace_s):
                    await self.shutdown()
            await asyncio.wait({task}, timeout=max(0.0, grace_s))
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the supervisor already reported it via wait()


class ProcessService(Service):
    """A child process in its own process group. Ready when ``ready_tcp`` (host, port) accepts a connection,
    or when a line of its output contains ``ready_line``, or (neither given) once started. Its output is
    logged line by line under the service's name; the last lines are kept for the error report."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, ready_tcp: tuple[str, int] | None = None, ready_line: str | None = None,
                 stop_signal: int = signal.SIGTERM) -> None:
        super().__init__(name)
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready_tcp = ready_tcp
        self.ready_line = ready_line
        self.stop_signal = stop_signal
        self.tail: deque[str] = deque(maxlen=20)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._saw_line = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        self._saw_line.clear()
        self.tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True)
        self._reader = asyncio.create_task(self._read(self._proc), name=f"output-{self.name}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream's limit: keep a piece of it
                raw = await proc.stdout.read(1024)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if self.ready_line and self.ready_line in line:
                self._saw_line.set()
            log.info("%s: %s", self.name, line, extra={"SERVICE": self.name})

    async def ready(self) -> bool:
        if not self.alive():
            return False
        if self.ready_line is not None and not self._saw_line.is_set():
            return False
        if self.ready_tcp is not None:
            try:
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(*self.ready_tcp)
            except (OSError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return True

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def wait(self) -> str:
        if self._proc is None:
            raise ServiceError("not started")
        code = await self._proc.wait()
        if self._reader is not None:  # the last lines explain the exit: let them arrive
            await asyncio.wait({self._reader}, timeout=0.5)
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        last = next((line for line in reversed(self.tail) if line.strip()), "")
        return f"{how}: {last}" if last else how

    async def stop(self, grace_s: float) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._signal(proc, self.stop_signal)
            try:
                async with asyncio.timeout(max(0.01, grace_s)):
                    await proc.wait()
            except TimeoutError:
                log.warning("%s did not stop within %.1f s: killing it", self.name, grace_s)
                self._signal(proc, signal.SIGKILL)
                await proc.wait()
        elif proc is not None:  # its own exit: reap the rest of its process group
            self._signal(proc, signal.SIGKILL)
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=1.0)
            self._reader.cancel()

    def _signal(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._proc is not None and self._proc.returncode is not None:
            out["exit_code"] = self._proc.returncode
        if self.ready_tcp is not None:
            out["listen"] = f"{self.ready_tcp[0]}:{self.ready_tcp[1]}"
        return out
