"""The fleet's inventory: what a device reported last (profile, hardware, appliance version, firmware slot,
model versions, agent state, health, live calls), its group, tags and when it was last seen; filtered by
group and tag and searched by id or any reported value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.console.schema import Device

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
    """Devices in ``group`` with ``tag`` whose id or report mentions ``q`` (case-insensitive), by id."""
    query = select(Device).order_by(Device.id)
    if group:
        query = query.where(Device.group == group)
    found = list(session.scalars(query))
    if tag:
        found = [d for d in found if tag in d.tags.get("tags", [])]
    if q:
        needle = q.lower()
        found = [d for d in found if needle in d.id or needle in str(d.report).lower()]
    return found
