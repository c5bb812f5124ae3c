"""Telemetry from the device to its console: samples (numbers: live calls, memory, CPU, turn latency p50/p95,
models loaded, update errors, and any the caller measures) and events, batched, redacted of personal data
*before* they are written to disk, and kept in a bounded on-disk outbox while the console cannot be reached:
past ``max_bytes`` the oldest batches are dropped and counted, and the count goes with the next upload.

Redaction: phone numbers (7 to 15 digits with the usual separators, a + or not; ISO dates are left alone) and
e-mail addresses become ``[phone]`` and ``[email]`` in every string (over-redacting a long dotted version
number is the price); the fields that may hold what a caller said (``transcript``, ``text``, ``audio``,
``utterance``) are removed unless the device opts in (``fleet.share_transcripts``)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config.files import write_atomic
from appliance.voice.turns import TURNS, TurnLatencies

PHONE = re.compile(r"(?<![\w@.])(?!\d{4}-\d\d-\d\d)\+?\(?\d(?:[\s().-]{0,2}\d){6,14}(?![\w@])")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
SPOKEN = frozenset({"transcript", "text", "audio", "utterance"})


def redact(text: str) -> str:
    return PHONE.sub("[phone]", EMAIL.sub("[email]", text))


def scrub(value: Any, share_transcripts: bool = False) -> Any:
    """``value`` with every string redacted and the spoken fields dropped (unless shared)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): scrub(v, share_transcripts) for k, v in value.items()
                if share_transcripts or str(k) not in SPOKEN}
    if isinstance(value, list | tuple):
        return [scrub(v, share_transcripts) for v in value]
    return value


class Outbox:
    """Batches waiting for the console, one file each (``<time_ns>.json``), oldest first."""

    def __init__(self, folder: Path, max_bytes: int = 4 << 20) -> None:
        self.folder, self.max_bytes = folder, max_bytes

    @property
    def dropped(self) -> int:
        try:
            return int((self.folder / "dropped").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _set_dropped(self, count: int) -> None:
        write_atomic(self.folder / "dropped", str(count), parents=True)

    def batches(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.exists() else []

    def put(self, batch: dict[str, Any]) -> None:
        write_atomic(self.folder / f"{time.time_ns()}.json", json.dumps(batch, separators=(",", ":")), parents=True)
        files = self.batches()
        total = sum(f.stat().st_size for f in files)
        lost = 0
        while total > self.max_bytes and len(files) > 1:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            try:
                old = json.loads(oldest.read_text())
                lost += len(old.get("samples", [])) + len(old.get("events", []))
            except ValueError:
                lost += 1
            oldest.unlink()
        if lost:
            self._set_dropped(self.dropped + lost)

    def flush(self, send: Callable[[dict[str, Any]], None]) -> int:
        """Send batches oldest first until one fails (its exception propagates; it stays for the next time);
        how many went."""
        sent = 0
        for path in self.batches():
            try:
                batch = json.loads(path.read_text())
            except ValueError:  # a torn file cannot happen (atomic writes), a hand-edited one can: drop it
                path.unlink()
                continue
            batch["dropped"] = self.dropped
            send(batch)
            path.unlink()
            if batch["dropped"]:
                self._set_dropped(self.dropped - batch["dropped"])
            sent += 1
        return sent


class ProcessMeter:
    """This process's memory (RSS) and CPU share since the previous reading, from /proc."""

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self.proc = proc
        self._last: tuple[float, float] | None = None

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        try:
            for line in (self.proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    values["memory_mb"] = round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError, IndexError):
            pass
        times = os.times()
        now = (time.monotonic(), times.user + times.system)
        if self._last is not None and now[0] > self._last[0]:
            values["cpu_percent"] = round(100 * (now[1] - self._last[1]) / (now[0] - self._last[0]), 1)
        self._last = now
        return values


def sample(values: dict[str, Any]) -> dict[str, Any]:
    """One sample: the numeric values only, with the time."""
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {"at": time.time(), "values": numbers}


class Sampler:
    """The numbers a device measures itself for each sample: its process's memory and CPU, and the turn
    latencies (p50/p95) of the conversations since the previous sample."""

    def __init__(self, turns: TurnLatencies = TURNS) -> None:
        self.meter, self.turns = ProcessMeter(), turns

    def __call__(self) -> dict[str, float]:
        return {**self.meter.read(), **self.turns.take()}
