"""The supervisor: starts the graph's services in dependency order, restarts them, reports, drains and reloads.

Each service runs under its own supervising task that captures everything it raises, so a service that
crashes, hangs in start-up or crash-loops affects only itself (a dependent waits for it, and fails with it
only if it never comes up). READY=1 goes to systemd once every service is ready or failed — model warm-up is
not waited for — and STATUS= follows every change. The watchdog is pinged from this event loop: a blocked
loop stops the pings and systemd restarts us, which is the point. SIGTERM drains (`stop`), SIGHUP reloads
(`reload`); `appliance.supervisor.lifecycle.serve` wires the signals to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.supervisor.graph import GraphError, ServiceSpec, start_order
from appliance.supervisor.notify import Notifier
from appliance.supervisor.service import RestartPolicy, Service, ServiceState
from appliance.supervisor.unit import Unit, describe

log = logging.getLogger(__name__)
S = ServiceState


class ServiceFactory(Protocol):
    def plan(self, settings: Any) -> list[ServiceSpec]: ...

    def make(self, spec: ServiceSpec, settings: Any) -> Service: ...


@dataclass(frozen=True)
class SupervisorOptions:
    grace_s: float = 20.0  # on SIGTERM: how long live calls and sessions may take to end before services stop
    stop_timeout_s: float = 5.0  # then, per service, how long its own shutdown may take before it is killed
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    status_file: Path | None = None  # JSON of status(), rewritten on every change and at exit
    poll_s: float = 0.05  # readiness probes and drain checks
    status_refresh_s: float = 1.0  # STATUS= and the status file are refreshed at least this often


class Supervisor:
    """The services of one graph. ``factory.plan(settings)`` says which services and in what order,
    ``factory.make(spec, settings)`` builds one (not started); settings are opaque here."""

    def __init__(self, factory: ServiceFactory, settings: Any, options: SupervisorOptions | None = None,
                 notifier: Notifier | None = None, extras: Callable[[], dict[str, Any]] | None = None) -> None:
        """``extras()`` adds keys to status(); its optional "notes" (a list of str) also go into STATUS=."""
        self.factory, self.settings = factory, settings
        self.options = options or SupervisorOptions()
        self.notifier = notifier or Notifier()
        self.extras = extras
        self.units: dict[str, Unit] = {}
        self.order: list[str] = []
        self.all_failed = asyncio.Event()
        self.ready_at: float | None = None
        self.ready = asyncio.Event()  # set with READY=1
        self._refusing: set[str] = set()
        self._dirty = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._written: dict[str, Any] | None = None
        self._file = StatusFile()

    # -- start and supervise -------------------------------------------------------------------------------
    async def start(self) -> None:
        specs = start_order(self.factory.plan(self.settings))  # a GraphError stops start-up, with the cycle
        self._background.append(asyncio.create_task(self._report(), name="supervisor-report"))
        interval = self.notifier.watchdog_interval()
        if interval:
            self._background.append(asyncio.create_task(self._watchdog(interval), name="supervisor-watchdog"))
        for spec in specs:
            self._launch(spec)
        self.order = [s.name for s in specs]

    def _launch(self, spec: ServiceSpec) -> Unit:
        unit = Unit(spec, self.factory.make(spec, self.settings), self.options.restart, self.units.get,
                    self._dirty.set, self.options.poll_s)
        unit.service.refuse(bool(self._refusing))
        self.units[spec.name] = unit
        unit.start()
        return unit

    # -- reporting -------------------------------------------------------------------------------------------
    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _report(self) -> None:
        last_text = None
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.status_refresh_s):
                    await self._dirty.wait()
            self._dirty.clear()
            text = self.status_text()
            if self.ready_at is None and self.units and all(u.settled.is_set() for u in self.units.values()):
                self.ready_at = time.monotonic()
                await self.write_status()  # the file says "running" before systemd hears READY=1
                self.ready.set()
                self.notifier.ready(text)
                log.info("ready: %s", text)
            elif text != last_text:
                self.notifier.status(text)
            last_text = text
            if self.units and all(u.state is S.FAILED for u in self.units.values()):
                self.all_failed.set()
            await self.write_status()

    async def write_status(self) -> None:
        path = self.options.status_file
        status = self.status()
        if path is None or status == self._written:
            return
        self._written = status
        await asyncio.to_thread(self._file.write, path, status, self._file.next())

    def status(self) -> dict[str, Any]:
        state = "stopped" if self._stopped.is_set() else "stopping" if self._stopping else \
            "running" if self.ready_at is not None else "starting"
        out: dict[str, Any] = {"state": state, "ready": state == "running", "pid": os.getpid(),
                               "refusing": sorted(self._refusing), "live": self.live(),
                               "services": {n: self.units[n].view() for n in self.order if n in self.units}}
        if self.extras is not None:
            out.update({k: v for k, v in self.extras().items() if k != "notes"})
        return out

    def status_text(self) -> str:
        parts = []
        for name in self.order:
            unit = self.units.get(name)
            if unit is not None:
                parts.append(f"{name} {unit.state}" + (f" ({unit.restarts} restarts)" if unit.restarts else ""))
        if self.extras is not None:
            parts.extend(self.extras().get("notes", []))
        text = ", ".join(parts) or "no services"
        if self._stopping and not self._stopped.is_set():
            live = self.live()
            return (f"stopping, draining {live} calls and sessions: " if live else "stopping: ") + text
        reasons = sorted(self._refusing - {"stopping"})
        if reasons:
            text += ", refusing new calls (" + ", ".join(reasons) + ")"
        return text

    # -- draining, stopping, reloading ------------------------------------------------------------------------
    def live(self) -> int:
        total = 0
        for unit in self.units.values():
            with contextlib.suppress(Exception):
                total += unit.service.live()
        return total

    def refuse(self, reason: str, on: bool) -> None:
        """Turn new calls and sessions away (503) while any reason ("stopping", "memory", …) holds."""
        before = bool(self._refusing)
        (self._refusing.add if on else self._refusing.discard)(reason)
        if bool(self._refusing) != before:
            for unit in self.units.values():
                unit.service.refuse(bool(self._refusing))
        self._dirty.set()

    def request_stop(self) -> None:
        """SIGTERM: the first asks for a drained stop, a second one skips the rest of the drain."""
        if self.stop_requested.is_set():
            self._force.set()
        self.stop_requested.set()

    async def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for live calls and sessions to end; how many are still live."""
        deadline = time.monotonic() + grace_s
        while self.live() and time.monotonic() < deadline and not self._force.is_set():
            await asyncio.sleep(self.options.poll_s)
        return self.live()

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.options.grace_s if grace_s is None else grace_s
        self.refuse("stopping", True)
        live = self.live()
        self.notifier.stopping(f"draining {live} calls and sessions (up to {grace:g} s)" if live else "stopping")
        if live:
            log.info("draining %d calls and sessions for up to %g s", live, grace)
            left = await self.drain(grace)
            if left:
                log.warning("%d calls and sessions still live after the drain: ending them", left)
        for name in reversed(self.order):
            if name in self.units:
                await self.units[name].stop(self.options.stop_timeout_s)
        self._stopped.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.notifier.status(self.status_text())
        await self.write_status()  # the final state, flushed before exit

    async def reload(self, settings: Any) -> dict[str, str]:
        """Apply new settings: services whose key changed (or that failed) restart, added ones start, removed
        ones stop, every other one gets reconfigure(). What happened to each service, by name."""
        self.notifier.reloading()
        try:
            specs = start_order(self.factory.plan(settings))
        except GraphError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.ready(self.status_text())
            return {"error": str(exc)}
        self.settings = settings
        actions: dict[str, str] = {}
        wanted = {s.name for s in specs}
        for name in reversed(self.order):
            if name not in wanted and name in self.units:
                await self.units.pop(name).stop(self.options.stop_timeout_s)
                actions[name] = "removed"
        for spec in specs:
            unit = self.units.get(spec.name)
            if unit is None:
                actions[spec.name] = "added"
            elif unit.spec.key != spec.key or unit.state is S.FAILED:
                actions[spec.name] = "reset" if unit.state is S.FAILED else "restarted"
                await unit.drain(self.options.grace_s, self.stop_requested)
                await unit.stop(self.options.stop_timeout_s)
            else:
                unit.spec = spec
                try:
                    await unit.service.reconfigure(settings)
                    actions[spec.name] = "reconfigured"
                except Exception as exc:
                    actions[spec.name] = f"reconfigure failed: {describe(exc)}"
                continue
            self._launch(spec)
        self.order = [s.name for s in specs]
        self.all_failed.clear()
        log.info("reloaded: %s", ", ".join(f"{n} {a}" for n, a in actions.items()))
        self._dirty.set()
        self.notifier.ready(self.status_text())
        return actions


class StatusFile:
    """Writes of the status file, newest wins. A write runs in a worker thread, and cancelling its awaiter (stop()
    cancels the periodic refresh) does not stop the thread: without an order, a refresh that began before the
    final write could land after it and leave a stopped appliance looking "running"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued = 0
        self._done = 0

    def next(self) -> int:
        """A ticket, taken on the event loop in the order the states were read."""
        self._issued += 1
        return self._issued

    def write(self, path: Path, data: dict[str, Any], ticket: int) -> bool:
        """Write ``data`` unless a later ticket has been written already; whether it was written."""
        with self._lock:
            if ticket < self._done:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp",
                                             delete=False) as tmp:
                tmp.write(json.dumps(data, indent=1, default=str))
            os.replace(tmp.name, path)
            self._done = ticket
            return True
