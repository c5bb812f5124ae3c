"""The audit log: every admin action, append-only and hash-chained. Each entry's hash is the SHA-256 of the
previous entry's hash and the entry's own fields (canonical JSON), so changing, removing or reordering a row
breaks every later hash; ``check`` walks the chain and says where. Appends are serialised: by a
transaction-scoped advisory lock on PostgreSQL, by taking SQLite's write lock before reading the newest entry;
a second entry claiming the same predecessor would be refused by a unique constraint."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from appliance.console.schema import AuditEntry

GENESIS = "0" * 64
ADVISORY_KEY = 0x61756474  # "audt": the transaction-scoped lock PostgreSQL appends take


def _hash(previous: str, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]) -> str:
    fields = {"previous": previous, "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "actor": actor,
              "action": action, "subject": subject, "detail": detail}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record(session: Session, actor: str, action: str, subject: str, **detail: Any) -> AuditEntry:
    """Append an entry in the caller's transaction (it lands with the action or not at all)."""
    dialect = session.get_bind().dialect.name  # one appender at a time, even on an empty log:
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})
    elif dialect == "sqlite":  # a write statement takes SQLite's write lock before the newest entry is read
        session.execute(text("UPDATE audit_log SET id = id WHERE 0"))
    last = session.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
    previous = last.hash if last else GENESIS
    at = datetime.now(UTC)
    detail = json.loads(json.dumps(detail, default=str))  # what the database will give back
    entry = AuditEntry(at=at, actor=actor, action=action, subject=subject[:200], detail=detail, previous=previous,
                       hash=_hash(previous, at, actor, action, subject[:200], detail))
    session.add(entry)
    session.flush()
    return entry


def check(session: Session) -> list[str]:
    """What is wrong with the chain (empty: intact)."""
    problems: list[str] = []
    previous = GENESIS
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        if entry.previous != previous:
            problems.append(f"entry {entry.id}: follows {entry.previous[:12]}…, but the entry before it is "
                            f"{previous[:12]}… (an entry was removed or reordered)")
        if _hash(entry.previous, entry.at, entry.actor, entry.action, entry.subject, entry.detail) != entry.hash:
            problems.append(f"entry {entry.id} ({entry.action} by {entry.actor}): its fields do not match its "
                            "hash (it was changed)")
        previous = entry.hash
    return problems
