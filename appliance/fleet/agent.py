"""The update agent: it polls (the device opens no port), verifies, chooses what is meant for this device,
installs it, and reports. ``poll_once`` is one check; ``run`` repeats it every ``interval_s`` with jitter, and
after failures with exponential backoff up to ``backoff_max_s``. An install interrupted by a crash or a kill is
resumed from its journal before anything else.

Choosing is a pure function (``choose``): for each model id, config bundle name and board, the newest version
whose tags match the device (or the version its group pins), that the appliance is new enough for, that is not
what is installed already and that has not failed here before.

A device enrolled at a fleet console (``link``) asks the console for its pins before choosing and installs only
what they name (a staged rollout decides when each device moves; the signatures still decide what may be
installed at all), and reports its inventory after each check. Without an answer from the console it installs
nothing that round.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from packaging.version import InvalidVersion, Version
from tuf.api.metadata import TargetFile

from appliance.errors import ApplianceError
from appliance.fleet.client import FleetError, TufClient
from appliance.fleet.enrolment import ConsoleLink
from appliance.fleet.events import Event, EventLog, since
from appliance.fleet.install import Installer
from appliance.fleet.state import AgentState, Status

log = logging.getLogger(__name__)
ROLES = ("models", "config", "firmware")


@dataclass(frozen=True)
class DeviceFacts:
    """What selection knows about this device."""

    appliance_version: str
    tags: frozenset[str]  # its profile name and fleet.tags
    pins: dict[str, int] = field(default_factory=dict)  # model id or bundle name -> version (its group's)
    config: str | None = None  # the configuration bundle it follows
    board: str | None = None  # the firmware board it takes
    pins_only: bool = False  # a console manages this device: nothing it has not pinned is installed


def choose(offers: Iterable[TargetFile], device: DeviceFacts, installed: dict[str, dict[str, int]],
           refused: Iterable[str], staged: str | None = None) -> list[TargetFile]:
    """The targets to install now, models first, then the config bundle, then firmware."""
    refused = set(refused)
    best: dict[tuple[str, str], TargetFile] = {}
    for target in offers:
        custom = target.custom
        kind = custom.get("kind")
        names = {"model": custom.get("model_id"), "config": custom.get("name"), "firmware": custom.get("board")}
        name = names.get(kind)
        if not name or target.path in refused or target.path == staged or not _fits(custom, device):
            continue
        if (kind == "config" and name != device.config) or (kind == "firmware" and name != device.board):
            continue
        version, pin = int(custom["version"]), device.pins.get(name)
        if (pin is not None and version != pin) or (pin is None and device.pins_only):
            continue
        key = (kind, name)
        if key not in best or version > int(best[key].custom["version"]):
            best[key] = target
    order = {"model": 0, "config": 1, "firmware": 2}
    return [best[k] for k in sorted(best, key=lambda k: (order[k[0]], k[1]))
            if installed.get(k[0], {}).get(k[1]) != int(best[k].custom["version"])]


def _fits(custom: dict, device: DeviceFacts) -> bool:
    tags = set(custom.get("tags") or [])
    if tags and not tags & device.tags:
        return False
    try:
        return Version(device.appliance_version) >= Version(str(custom.get("min_appliance") or "0"))
    except InvalidVersion:
        return False


@dataclass
class Schedule:
    interval_s: float = 300.0
    jitter: float = 0.2  # each wait is interval_s * (1 +/- jitter): a fleet does not poll in step
    backoff_max_s: float = 3600.0

    def next_wait(self, failures: int, rng: random.Random) -> float:
        base = self.interval_s if failures == 0 else min(self.backoff_max_s, self.interval_s * 2 ** failures)
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass
class Agent:
    client: TufClient
    installer: Installer
    state: AgentState
    events: EventLog
    device: DeviceFacts
    schedule: Schedule = field(default_factory=Schedule)
    link: ConsoleLink | None = None

    def poll_once(self) -> Status:
        """Resume an interrupted install, refresh, choose, install; the status after it."""
        status = self.state.status()
        status.last_check, start = time.time(), time.monotonic()
        try:
            self._resume(local=True)  # a switch, check or rollback in progress needs no network: finish it first
            self.client.refresh()
            self._resume(local=False)  # an interrupted download or verification continues with fresh metadata
            facts = self.device
            if self.link is not None:
                facts = replace(facts, pins=self.link.pins(), pins_only=True)
            offers = [t for role in ROLES for t in self.client.offers(role)]
            chosen = choose(offers, facts, self.state.installed(), self.state.refused(),
                            self.state.status().staged)
            status.pending = [t.path for t in chosen]
            self.state.save_status(status)
            self.events.emit(Event("check", True, f"{len(chosen)} update(s) for this device", seconds=since(start)))
            for target in chosen:
                if self.installer.stop.is_set():
                    break
                self.installer.install(target)
                status.pending.remove(target.path)
            status = self._merge(status)
            status.last_ok, status.last_error = time.time(), None
        except (ApplianceError, OSError) as exc:  # OSError: the state directory itself (full, read-only)
            status = self._merge(status)
            status.last_error = str(exc)
            self.events.emit(Event("error", False, str(exc), seconds=since(start)))
            log.warning("update check failed: %s", exc)
        self.state.save_status(status)
        if self.link is not None:
            self.link.send(self.state, self._new_events())
        return status

    def _new_events(self) -> list[dict[str, Any]]:
        """The agent's events since the last ones handed to the console (a cursor file beside the log)."""
        cursor = self.events.path.with_name("events.sent")
        try:
            last = cursor.read_text().strip()
        except FileNotFoundError:
            last = ""
        events = self.events.read()
        ids = [e.get("id") for e in events]
        fresh = events[ids.index(last) + 1:] if last in ids else events
        if fresh:
            cursor.write_text(str(fresh[-1].get("id", "")))
        return fresh

    def _resume(self, local: bool) -> None:
        job = self.state.job()
        if job is not None and (job.step in ("activate", "check", "rollback")) == local:
            log.info("resuming the %s install of %s v%s at step %s", job.kind, job.name, job.version, job.step)
            self.installer.resume(job)

    def _merge(self, status: Status) -> Status:
        """Keep what the installer wrote to the status file meanwhile (staged firmware, notes)."""
        saved = self.state.status()
        status.staged, status.notes = saved.staged, saved.notes
        return status

    def run(self, stop: threading.Event, rng: random.Random | None = None) -> None:
        """Poll until ``stop`` is set."""
        rng = rng or random.Random()
        failures = 0
        while not stop.is_set():
            status = self.poll_once()
            failures = failures + 1 if status.last_error else 0
            stop.wait(self.schedule.next_wait(failures, rng))


__all__ = ["Agent", "DeviceFacts", "FleetError", "Schedule", "choose"]
