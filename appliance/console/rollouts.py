"""Staged rollouts: a release sent to a group in waves, each wave judged by its devices' own reports.

A rollout's devices are its group's (not revoked) when it starts, split into waves by ``plan`` (cumulative
sizes: a count or "N%" of the group; the last wave takes the rest); devices that join the group later go into
the last wave. A device's part: ``waiting`` (it holds what it runs), ``assigned`` (it is told to run the
release: the update agent asks for its assignment, see ``assignment``), then ``done`` once it reports every
target of the release installed (which on the device means smoke-tested and health-checked) and its health
ok, or ``failed`` when it reports a target refused (failed smoke test or health check: the agent rolled back
already), reports itself unhealthy after the update, or stays silent past the deadline. A failed device is
told to run what it ran before.

``tick`` moves a rollout on: it halts by itself as soon as a wave's failures pass the threshold (the rest of
the wave keeps the new version; nothing further is assigned), waits for a person's approval between waves when
asked to, and is done after the last wave. Operators pause, resume, abort (every device of it goes back) and
approve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from appliance.console.schema import Device, Release, Rollout, RolloutDevice
from appliance.errors import ApplianceError

ACTIVE = ("running", "paused", "approval")
PREFIXES = {"model": "models/{name}/{version}/", "config": "config/{name}/{version}.",
            "firmware": "firmware/{name}/{version}/"}


class RolloutError(ApplianceError):
    """A rollout cannot be made or changed as asked; the message says why."""


def now() -> datetime:
    return datetime.now(UTC)


def plan(sizes: list[int | str], devices: int) -> list[int]:
    """The cumulative device count after each wave: ``[1, "50%", "100%"]`` of 10 devices is ``[1, 5, 10]``."""
    if not sizes:
        raise RolloutError("a rollout needs at least one wave")
    counts: list[int] = []
    for size in sizes:
        if isinstance(size, str) and size.endswith("%"):
            try:
                share = float(size[:-1])
            except ValueError as exc:
                raise RolloutError(f"wave size {size!r}: a count or a percentage like '25%'") from exc
            if not 0 < share <= 100:
                raise RolloutError(f"wave size {size!r}: a percentage from above 0 to 100")
            count = math.ceil(devices * share / 100)
        else:
            try:
                count = int(size)
            except ValueError as exc:
                raise RolloutError(f"wave size {size!r}: a count or a percentage like '25%'") from exc
            if count < 1:
                raise RolloutError(f"wave size {size!r}: at least one device")
        counts.append(min(devices, max(count, counts[-1] + 1 if counts else count)))
    counts[-1] = devices
    return counts


def pins_of(release: Release) -> dict[str, int]:
    return {name: int(version) for names in release.targets.values() for name, version in names.items()}


def start(session: Session, release: Release, group: str, sizes: list[int | str], actor: str,
          failure_threshold: float = 0.2, deadline_s: int = 3600, approval: bool = False) -> Rollout:
    devices = list(session.scalars(select(Device).where(Device.group == group, Device.revoked.is_(None))
                                   .order_by(Device.id)))
    if not devices:
        raise RolloutError(f"group {group!r} has no enrolled devices")
    busy = session.scalar(select(Rollout).where(Rollout.group == group, Rollout.state.in_(ACTIVE)))
    if busy is not None:
        raise RolloutError(f"group {group!r} has rollout {busy.id} in progress ({busy.state}): finish, abort or "
                           "let it halt first")
    if not 0 <= failure_threshold < 1:
        raise RolloutError("failure_threshold is a share of a wave, from 0 up to (not including) 1")
    counts = plan(sizes, len(devices))
    at = now()
    rollout = Rollout(release_id=release.id, group=group, waves={"sizes": list(sizes), "counts": counts}, wave=0,
                      state="running", failure_threshold=failure_threshold, deadline_s=deadline_s, approval=approval,
                      created=at, created_by=actor, updated=at)
    session.add(rollout)
    session.flush()
    names = set(pins_of(release))
    for index, device in enumerate(devices):
        wave = next(w for w, count in enumerate(counts) if index < count)
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, state="waiting",
                                  previous=_running(device, names), assigned=None, finished=None, detail=None))
    session.flush()
    _assign(session, rollout, 0)
    return rollout


def _running(device: Device, names: set[str]) -> dict[str, int]:
    """What the device runs of these names, by its last report (``installed``: kind -> name -> version)."""
    installed = device.report.get("installed") or {}
    return {name: int(version) for versions in installed.values() if isinstance(versions, dict)
            for name, version in versions.items() if name in names}


def members(session: Session, rollout: Rollout) -> list[RolloutDevice]:
    return list(session.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)
                                .order_by(RolloutDevice.wave, RolloutDevice.device_id)))


def _assign(session: Session, rollout: Rollout, wave: int) -> None:
    session.execute(update(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == wave,
                                                RolloutDevice.state == "waiting")
                    .values(state="assigned", assigned=now()).execution_options(synchronize_session="fetch"))


def judge(member: RolloutDevice, device: Device, release: Release, deadline_s: int, at: datetime) -> str | None:
    """Why the device failed its part, "" when it is done, None while it is still on its way."""
    report = device.report
    refused = [str(path) for path in report.get("refused") or []]
    installed = report.get("installed") or {}
    pending = []
    for kind, names in release.targets.items():
        for name, version in names.items():
            prefix = PREFIXES.get(kind, "{name}/{version}").format(name=name, version=version)
            if any(path.startswith(prefix) for path in refused):
                return f"{kind} {name} v{version} failed on the device (its smoke test or health check)"
            if (installed.get(kind) or {}).get(name) != int(version):
                pending.append(f"{name} v{version}")
    heard_since = device.last_seen is not None and member.assigned is not None and device.last_seen > member.assigned
    if not pending and heard_since:
        health = report.get("health", "ok")
        return "" if health == "ok" else f"unhealthy after the update: {health}"
    if member.assigned is not None and at - member.assigned > timedelta(seconds=deadline_s):
        return f"not done within {deadline_s} s (waiting for {', '.join(pending) or 'a report'})"
    return None


@dataclass
class Progress:
    wave: int
    size: int
    done: int
    failed: int
    assigned: int
    waiting: int

    @property
    def failure_rate(self) -> float:
        return self.failed / self.size if self.size else 0.0


def progress(session: Session, rollout: Rollout, wave: int | None = None) -> list[Progress]:
    """Each wave's counts by state (counted by the database); with ``wave``, that wave's only."""
    found = [Progress(w, 0, 0, 0, 0, 0) for w in range(len(rollout.waves["counts"]))]
    query = select(RolloutDevice.wave, RolloutDevice.state, func.count()).where(
        RolloutDevice.rollout_id == rollout.id).group_by(RolloutDevice.wave, RolloutDevice.state)
    for number, state, count in session.execute(query if wave is None else query.where(RolloutDevice.wave == wave)):
        item = found[number]
        item.size += count
        field = {"done": "done", "failed": "failed", "assigned": "assigned"}.get(state, "waiting")
        setattr(item, field, getattr(item, field) + count)
    return found if wave is None else [found[wave]]


def tick(session: Session, rollout: Rollout, at: datetime | None = None, device_id: str | None = None) -> list[str]:
    """Judge the rollout's assigned devices (with ``device_id``, that one only: what its report may have changed)
    and move the rollout on; what happened, for the audit log. The work per report does not grow with the
    fleet: one device judged, one wave counted by the database."""
    at = at or now()
    happened: list[str] = []
    if rollout.state in ("done", "aborted"):
        return happened
    release = session.get(Release, rollout.release_id)
    assert release is not None
    if rollout.state == "running":
        _adopt_newcomers(session, rollout, release, device_id)
    assigned = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.state == "assigned")
    if device_id is not None:
        assigned = assigned.where(RolloutDevice.device_id == device_id)
    for member in session.scalars(assigned):  # judged in every state: a halted wave's devices still finish
        device = session.get(Device, member.device_id)
        verdict = "device revoked" if device is None or device.revoked else \
            judge(member, device, release, rollout.deadline_s, at)
        if verdict is None:
            continue
        member.state, member.finished, member.detail = ("done" if verdict == "" else "failed"), at, verdict or None
        happened.append(f"device {member.device_id}: {member.state}" + (f" ({verdict})" if verdict else ""))
    if rollout.state != "running":
        rollout.updated = at if happened else rollout.updated
        return happened
    [wave] = progress(session, rollout, rollout.wave)
    accepted = rollout.wave in rollout.waves.get("accepted", [])
    if wave.failed and wave.failure_rate > rollout.failure_threshold and not accepted:
        rollout.state = "halted"
        rollout.reason = (f"wave {rollout.wave + 1}: {wave.failed} of {wave.size} devices failed "
                          f"({wave.failure_rate:.0%} > {rollout.failure_threshold:.0%})")
        happened.append(f"halted: {rollout.reason}")
    elif wave.assigned == 0 and wave.waiting == 0:
        if rollout.wave + 1 >= len(rollout.waves["counts"]):
            rollout.state, rollout.reason = "done", None
            happened.append("done")
        elif rollout.approval:
            rollout.state, rollout.reason = "approval", f"wave {rollout.wave + 1} done: approve the next"
            happened.append(rollout.reason)
        else:
            rollout.wave += 1
            _assign(session, rollout, rollout.wave)
            happened.append(f"wave {rollout.wave + 1} started")
    if happened:
        rollout.updated = at
    return happened


def _adopt_newcomers(session: Session, rollout: Rollout, release: Release, device_id: str | None = None) -> None:
    """Devices of the group that are not part of the rollout yet (with ``device_id``: that one, if it is such)
    join its last wave."""
    last = len(rollout.waves["counts"]) - 1
    known = select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout.id)
    query = select(Device).where(Device.group == rollout.group, Device.revoked.is_(None), Device.id.not_in(known))
    for device in session.scalars(query if device_id is None else query.where(Device.id == device_id)):
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=last,
                                  state="assigned" if rollout.wave == last else "waiting",
                                  previous=_running(device, set(pins_of(release))),
                                  assigned=now() if rollout.wave == last else None, finished=None, detail=None))
    session.flush()


def act(session: Session, rollout: Rollout, action: str) -> None:
    """pause, resume, approve (the next wave) or abort (every device goes back to what it ran)."""
    allowed = {"pause": ("running", "approval"), "resume": ("paused", "halted"), "approve": ("approval",),
               "abort": (*ACTIVE, "halted")}
    if action not in allowed:
        raise RolloutError(f"unknown action {action!r}: pause, resume, approve or abort")
    if rollout.state not in allowed[action]:
        raise RolloutError(f"rollout {rollout.id} is {rollout.state}: it cannot {action}")
    if action == "pause":
        rollout.state, rollout.reason = "paused", "paused by an operator"
    elif action == "resume":  # after a halt: the operator accepts this wave's failures and goes on
        if rollout.state == "halted":
            rollout.waves = {**rollout.waves, "accepted": [*rollout.waves.get("accepted", []), rollout.wave]}
        rollout.state, rollout.reason = "running", None
    elif action == "approve":
        rollout.state, rollout.reason = "running", None
        rollout.wave += 1
        _assign(session, rollout, rollout.wave)
    else:
        rollout.state, rollout.reason = "aborted", "aborted by an operator: every device goes back"
    rollout.updated = now()


def assignment(session: Session, device: Device) -> dict[str, Any]:
    """What the device should run: ``pins`` (name -> version) from its latest rollout, and whether the console
    manages it (then the agent installs nothing the console has not pinned)."""
    row = session.execute(select(RolloutDevice, Rollout).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                          .where(RolloutDevice.device_id == device.id).order_by(Rollout.id.desc()).limit(1)).first()
    if row is None:
        return {"pins": {}, "managed": True, "rollout": None}
    member, rollout = row
    release = session.get(Release, rollout.release_id)
    assert release is not None
    new = member.state in ("assigned", "done") and rollout.state != "aborted"
    pins = pins_of(release) if new else dict(member.previous)
    return {"pins": pins, "managed": True, "rollout": rollout.id, "state": member.state}
