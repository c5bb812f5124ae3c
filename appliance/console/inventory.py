"""The fleet's inventory: what a device reported last (profile, hardware, appliance version, firmware slot,
model versions, agent state, health, live calls), its group, tags and when it was last seen; filtered by
group and tag and searched by id or any reported value. Also the views of releases and rollouts (per-wave
progress, each device's part) that the API and the pages show."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from appliance.console import rollouts
from appliance.console.schema import Device, Release, Rollout

SUMMARY = ("profile", "version", "slot", "health", "calls", "agent")  # the report's fields shown in lists


def device_view(device: Device, full: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": device.id, "group": device.group, "tags": device.tags.get("tags", []),
        "enrolled": device.enrolled.isoformat(),
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "revoked": device.revoked.isoformat() if device.revoked else None,
        **{key: device.report.get(key) for key in SUMMARY},
    }
    if full:
        view.update(report=device.report, certificate=device.certificate, serial=device.serial)
    return view


def search(session: Session, q: str = "", group: str | None = None, tag: str | None = None) -> Sequence[Device]:
    """Devices in ``group`` with ``tag`` whose id or report mentions ``q`` (case-insensitive), by id. The
    database does the filtering on the JSON columns' text (SQLite and PostgreSQL alike); a tag found there is
    confirmed on the decoded list (the text would also match the key "tags" or a tag's part)."""
    query = select(Device).order_by(Device.id)
    if group:
        query = query.where(Device.group == group)
    if tag:
        query = query.where(cast(Device.tags, String).contains(json.dumps(tag), autoescape=True))
    if q:
        needle = q.lower()
        query = query.where(or_(Device.id.contains(needle, autoescape=True),
                                func.lower(cast(Device.report, String)).contains(needle, autoescape=True)))
    found = session.scalars(query)
    return [d for d in found if tag in d.tags.get("tags", [])] if tag else list(found)


def release_view(release: Release) -> dict[str, Any]:
    return {"name": release.name, "targets": release.targets, "created": release.created.isoformat(),
            "created_by": release.created_by}


def rollout_view(session: Session, rollout: Rollout, full: bool = False) -> dict[str, Any]:
    release = session.get(Release, rollout.release_id)
    view: dict[str, Any] = {
        "id": rollout.id, "release": release.name if release else None, "group": rollout.group,
        "state": rollout.state, "reason": rollout.reason, "wave": rollout.wave + 1,
        "waves": [{"wave": p.wave + 1, "size": p.size, "done": p.done, "failed": p.failed, "assigned": p.assigned,
                   "waiting": p.waiting} for p in rollouts.progress(session, rollout)],
        "failure_threshold": rollout.failure_threshold, "approval": rollout.approval,
        "created": rollout.created.isoformat(), "updated": rollout.updated.isoformat(),
    }
    if full:
        view["devices"] = [{"device": m.device_id, "wave": m.wave + 1, "state": m.state, "detail": m.detail,
                            "previous": m.previous} for m in rollouts.members(session, rollout)]
    return view
