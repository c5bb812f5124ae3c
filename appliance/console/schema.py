"""The console's tables (SQLAlchemy 2 declarative). A change here comes with a migration in
``migrations/versions/`` (tests check that the migrated schema matches these tables)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Dialect, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Times in UTC, aware on the way out on every database (SQLite keeps no zone; PostgreSQL answers in the
    session's zone). A naive time on the way in is a bug, and refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the console's database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin, operator, viewer
    password_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(default=False)


class ApiToken(Base):
    """A bearer token of a user (an API client, or a browser session's cookie); only its sha256 is kept."""
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime]
    expires: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(default=False)


class EnrolmentToken(Base):
    """A one-time token an admin hands to one device (or an image's boot partition); only its sha256 is kept."""
    __tablename__ = "enrolment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    group: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime]
    expires: Mapped[datetime]
    used_by: Mapped[str | None] = mapped_column(String(64))  # the device that spent it
    used: Mapped[datetime | None]


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # derived from its public key
    public_key: Mapped[str] = mapped_column(String(64), unique=True)  # Ed25519, hex
    certificate: Mapped[str] = mapped_column(Text)  # PEM, issued by the console's CA
    serial: Mapped[str] = mapped_column(String(40), unique=True)
    group: Mapped[str | None] = mapped_column(String(64), index=True)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"tags": [...]}: JSON works on both databases
    enrolled: Mapped[datetime]
    revoked: Mapped[datetime | None]
    last_seen: Mapped[datetime | None]
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the last inventory report, as sent


class AuditEntry(Base):
    """One admin action; each entry's hash covers the previous entry's hash (a chain: editing or deleting a
    row breaks every later hash)."""
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("previous", name="uq_audit_previous"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    previous: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Release(Base):
    """A set of signed targets (published to the repository by `appliance release`), each named by kind, name
    and version: ``targets = {"model": {"silero-vad-v6": 2}, "config": {...}, "firmware": {...}}``."""
    __tablename__ = "releases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    targets: Mapped[dict[str, Any]]
    created: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))


class Rollout(Base):
    """A release sent to a group in waves (``waves``: sizes, a count or "N%" of the group, cumulative or not,
    see ``rollouts.plan``); each wave is judged by its devices' reports, halted past ``failure_threshold``."""
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    waves: Mapped[dict[str, Any]]  # {"sizes": [1, "50%", "100%"]}
    wave: Mapped[int] = mapped_column(default=0)  # the wave in progress (0-based)
    state: Mapped[str] = mapped_column(String(20))  # running, paused, approval, halted, aborted, done
    failure_threshold: Mapped[float]
    deadline_s: Mapped[int]
    approval: Mapped[bool] = mapped_column(default=False)  # a person approves each next wave
    reason: Mapped[str | None] = mapped_column(Text)  # why it halted, paused or was aborted
    created: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))
    updated: Mapped[datetime]


class RolloutDevice(Base):
    """One device's part in a rollout: its wave, what it ran before (``previous``: the versions it goes back
    to), and its state: waiting, assigned, done, failed, rolled-back."""
    __tablename__ = "rollout_devices"
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)
    wave: Mapped[int]
    state: Mapped[str] = mapped_column(String(20))
    previous: Mapped[dict[str, Any]]
    assigned: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    detail: Mapped[str | None] = mapped_column(Text)


class Sample(Base):
    """One telemetry sample of a device: numbers by name (calls, memory_mb, cpu_percent, …) at a time."""
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    values: Mapped[dict[str, Any]]


class DeviceEvent(Base):
    """An event a device sent (updates, errors), redacted on the device before it left."""
    __tablename__ = "device_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]]
