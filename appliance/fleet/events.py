"""The update agent's report: one JSON object per line in ``events.jsonl`` of its state directory, each a check,
download, apply, rollback, refusal, staged firmware or error, in the documented schema
(``docs/fleet-events.schema.json``) that the console consumes. The file is appended with one write per event
(a crash loses at most the event being written) and rotated to ``events.jsonl.1`` past ``MAX_BYTES``.
Events carry no personal data: targets, versions, sizes, durations and error messages about updates."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

SCHEMA = "appliance.fleet.event/1"
MAX_BYTES = 1 << 20
EventType = Literal["check", "download", "apply", "rollback", "refused", "staged", "error"]


@dataclass
class Event:
    type: EventType
    ok: bool
    detail: str = ""
    kind: str | None = None  # model, config or firmware
    target: str | None = None
    name: str | None = None  # model id, config bundle name or board
    version: int | None = None
    bytes: int = 0  # on the wire
    seconds: float = 0.0
    schema: str = SCHEMA
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: Event) -> Event:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(event), separators=(",", ":")) + "\n").encode()
        try:
            if self.path.stat().st_size + len(line) > MAX_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return event

    def read(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []


def since(start: float) -> float:
    return round(time.monotonic() - start, 3)
