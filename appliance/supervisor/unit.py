"""One service under supervision: its state machine, run by its own task.

pending (waiting for dependencies) → starting → ready → (ended on its own) → restarting → starting …, or
failed after a crash loop; stopping → stopped when the supervisor ends it. Everything the service raises is
captured here and turned into ``last_error``, so one service's failure never reaches the others; a failure of
this loop itself (a bug) marks the service failed rather than dying silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.supervisor.graph import ServiceSpec
from appliance.supervisor.service import RestartPolicy, RestartTracker, Service, ServiceState

log = logging.getLogger(__name__)
S = ServiceState


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(eq=False)
class Unit:
    spec: ServiceSpec
    service: Service
    policy: RestartPolicy
    lookup: Callable[[str], Unit | None]  # a dependency by name (a reload may replace it meanwhile)
    on_change: Callable[[], None] = lambda: None
    poll_s: float = 0.05
    state: ServiceState = S.PENDING
    restarts: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.time)  # wall clock of the last state change
    ready_since: float | None = None  # monotonic
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # ready or failed at least once
    runner: asyncio.Task[None] | None = None
    tracker: RestartTracker = field(init=False)

    def __post_init__(self) -> None:
        self.tracker = RestartTracker(self.policy)

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self.runner = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self, timeout_s: float) -> None:
        """End the supervision, then the service (its own shutdown gets ``timeout_s``)."""
        if self.runner is not None:
            self.runner.cancel()
            await asyncio.wait({self.runner})
        self._set(S.STOPPING)
        try:
            await self.service.stop(timeout_s)
        except Exception as exc:
            log.warning("stopping %s: %s", self.name, describe(exc), extra={"SERVICE": self.name})
        self._set(S.STOPPED)

    async def drain(self, grace_s: float, interrupted: asyncio.Event) -> None:
        """Refuse new calls and wait up to ``grace_s`` for the live ones to end (before a restart)."""
        svc = self.service
        if not svc.live():
            return
        log.info("%s restarts for a changed setting: draining %d calls first", self.name, svc.live())
        svc.refuse(True)
        deadline = time.monotonic() + grace_s
        while svc.live() and time.monotonic() < deadline and not interrupted.is_set():
            await asyncio.sleep(self.poll_s)

    def view(self) -> dict[str, Any]:
        out = {"state": str(self.state), "ready": self.state is S.READY, "alive": self.service.alive(),
               "restarts": self.restarts, "last_error": self.last_error, "pid": self.service.pid,
               "since": round(self.since, 3), "depends_on": list(self.spec.depends_on)}
        try:
            out.update(self.service.health())
        except Exception as exc:
            out["health_error"] = repr(exc)
        return out

    def _set(self, state: ServiceState) -> None:
        self.state, self.since = state, time.time()
        if state in (S.READY, S.FAILED):
            self.settled.set()
        log.info("%s %s", self.name, state, extra={"SERVICE": self.name})
        self.on_change()

    async def _supervise(self) -> None:
        try:
            if not await self._dependencies():
                return
            while True:
                reason = await self._run_once()
                healthy_s = time.monotonic() - self.ready_since if self.ready_since is not None else 0.0
                self.ready_since, self.last_error = None, reason
                log.warning("%s ended: %s", self.name, reason, extra={"SERVICE": self.name})
                await self._release()
                delay = self.tracker.failed(time.monotonic(), healthy_s)
                if delay is None:
                    log.error("%s failed %d times within %g s: not restarting it until a reload", self.name,
                              self.policy.crash_limit, self.policy.crash_window_s, extra={"SERVICE": self.name})
                    self._set(S.FAILED)
                    return
                self.restarts += 1
                self._set(S.RESTARTING)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the supervision itself: this service is failed, the rest go on
            log.exception("supervising %s failed", self.name, extra={"SERVICE": self.name})
            self.last_error = f"supervisor error: {describe(exc)}"
            self._set(S.FAILED)

    async def _dependencies(self) -> bool:
        for dep in self.spec.depends_on:
            while True:
                other = self.lookup(dep)
                if other is None or other.state is S.FAILED:
                    self.last_error = f"dependency {dep} failed"
                    self._set(S.FAILED)
                    return False
                if other.settled.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):  # not wait_for: on 3.11 it can swallow a cancellation
                        await other.settled.wait()
        return True

    async def _run_once(self) -> str:
        """Start, wait until ready, wait until ended: the reason it ended (or never became ready)."""
        svc = self.service
        self._set(S.STARTING)
        try:
            await svc.start()
        except Exception as exc:
            return f"could not start: {describe(exc)}"
        deadline = time.monotonic() + self.policy.ready_timeout_s
        while True:
            if not svc.alive():
                return await self._ended()
            try:
                if await svc.ready():
                    break
            except Exception as exc:  # a broken probe means "not ready", not a crash of the supervisor
                log.debug("%s readiness probe: %s", self.name, exc)
            if time.monotonic() > deadline:
                return f"not ready within {self.policy.ready_timeout_s:g} s"
            await svc.settle(self.poll_s)
        self.ready_since = time.monotonic()
        self._set(S.READY)
        return await self._ended()

    async def _ended(self) -> str:
        try:
            return await self.service.wait()
        except Exception as exc:
            return describe(exc)

    async def _release(self) -> None:
        """After a crash: whatever is left of the service (a process group, a task) goes before the restart."""
        try:
            await self.service.stop(1.0)
        except Exception as exc:
            log.warning("cleaning up after %s: %s", self.name, describe(exc))
