"""The console's side of telemetry: batches from devices stored as time series (samples) and events, redacted a
second time on arrival (a device of an older version must not leak either), kept ``RETENTION`` long; the fleet's
newest numbers for Prometheus to federate (``/metrics``); and a device's series drawn as small SVG charts for
its page (no chart library: a polyline per metric)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.console.schema import Device, DeviceEvent, Sample
from appliance.fleet.telemetry import scrub

RETENTION = timedelta(days=30)
MAX_BATCH = 1000  # samples or events in one upload
CHARTED = ("calls", "memory_mb", "cpu_percent", "turn_latency_p95_ms")


def store(session: Session, device: Device, batch: dict[str, Any]) -> int:
    """Keep a device's batch; how many samples and events it held. Times in the future are clamped to now."""
    now = datetime.now(UTC)
    kept = 0
    for item in list(batch.get("samples") or [])[:MAX_BATCH]:
        values = {str(k): float(v) for k, v in (item.get("values") or {}).items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        session.add(Sample(device_id=device.id, at=_when(item.get("at"), now), values=values))
        kept += 1
    for item in list(batch.get("events") or [])[:MAX_BATCH]:
        detail = scrub({k: v for k, v in item.items() if k not in ("time", "type")})
        session.add(DeviceEvent(device_id=device.id, at=_when(item.get("time"), now),
                                type=str(item.get("type", "event"))[:32], detail=detail))
        kept += 1
    dropped = int(batch.get("dropped") or 0)
    if dropped:
        device.report = {**device.report, "telemetry_dropped": int(device.report.get("telemetry_dropped", 0)) + dropped}
    session.execute(delete(Sample).where(Sample.device_id == device.id, Sample.at < now - RETENTION))
    return kept


def _when(value: Any, now: datetime) -> datetime:
    try:
        if isinstance(value, int | float):
            at = datetime.fromtimestamp(float(value), UTC)
        else:
            at = datetime.fromisoformat(str(value))
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return now
    return min(at, now)


Points = list[tuple[float, float]]  # (unix time, value)


def series(session: Session, device_id: str, since: timedelta = timedelta(days=1)) -> dict[str, Points]:
    """Each metric's points of the last ``since``."""
    found: dict[str, Points] = {}
    start = datetime.now(UTC) - since
    for sample in session.scalars(select(Sample).where(Sample.device_id == device_id, Sample.at >= start)
                                  .order_by(Sample.at)):
        for name, value in sample.values.items():
            found.setdefault(name, []).append((sample.at.timestamp(), float(value)))
    return found


def svg(points: Points, width: int = 320, height: int = 60) -> str:
    """A sparkline of the points (time on x, value on y) as an inline SVG element."""
    if not points:
        return ""
    t0, t1 = points[0][0], points[-1][0] or 1
    top = max(v for _, v in points) or 1.0
    span = (t1 - t0) or 1.0
    xy = " ".join(f"{(t - t0) / span * (width - 4) + 2:.1f},{height - 2 - v / top * (height - 4):.1f}"
                  for t, v in points)
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f'<polyline fill="none" stroke="#2f6fdb" stroke-width="1.5" points="{xy}"/></svg>')


def charts(session: Session, device_id: str) -> list[dict[str, Any]]:
    found = series(session, device_id)
    names = [n for n in CHARTED if n in found] + sorted(n for n in found if n not in CHARTED)
    return [{"name": n, "last": found[n][-1][1], "max": max(v for _, v in found[n]), "svg": svg(found[n])}
            for n in names]


class FleetCollector(Collector):
    """The newest sample of every device as gauges labelled by device and group, and the fleet's counts."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            devices = {d.id: d for d in session.scalars(select(Device))}
            newest = select(Sample.device_id, func.max(Sample.id).label("id")).group_by(Sample.device_id).subquery()
            latest = session.scalars(select(Sample).join(newest, Sample.id == newest.c.id))
            gauges: dict[str, GaugeMetricFamily] = {}
            for sample in latest:
                device = devices.get(sample.device_id)
                for name, value in sample.values.items():
                    metric = "appliance_fleet_" + "".join(c if c.isalnum() else "_" for c in name)
                    gauge = gauges.setdefault(metric, GaugeMetricFamily(metric, f"{name}, the newest sample",
                                                                        labels=["device", "group"]))
                    gauge.add_metric([sample.device_id, (device.group if device else None) or ""], float(value))
            yield from gauges.values()
            count = GaugeMetricFamily("appliance_fleet_devices", "Enrolled devices", labels=["state"])
            count.add_metric(["active"], sum(d.revoked is None for d in devices.values()))
            count.add_metric(["revoked"], sum(d.revoked is not None for d in devices.values()))
            yield count
            dropped = GaugeMetricFamily("appliance_fleet_telemetry_dropped", "Telemetry a device dropped while "
                                        "offline (its bounded queue was full)", labels=["device"])
            for device in devices.values():
                dropped.add_metric([device.id], float(device.report.get("telemetry_dropped", 0)))
            yield dropped
