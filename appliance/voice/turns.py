"""Turn latencies as a device measures them in service (for its telemetry): from the moment a user's turn is
confirmed over (the endpointer's SpeechEnded, after ``voice.hangover_ms`` of silence) to the first synthesised
audio of the answer, for every conversation in this process. The caller's silence before the confirmation is
the hangover, a setting; what varies is measured here. ``appliance bench voice`` measures the whole turn from
the last speech sample on recorded speech."""

from __future__ import annotations

import threading
from collections import deque


class TurnLatencies:
    """The newest ``keep`` latencies (seconds), shared by every conversation, read and cleared by telemetry."""

    def __init__(self, keep: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(max(0.0, seconds))

    def take(self) -> dict[str, float]:
        """p50 and p95 in ms of the turns since the last take, and their count (empty: no turn since)."""
        with self._lock:
            values = sorted(self._values)
            self._values.clear()
        if not values:
            return {}

        def pct(share: float) -> float:
            return round(values[min(len(values) - 1, int(share * len(values)))] * 1000, 1)

        return {"turn_latency_p50_ms": pct(0.5), "turn_latency_p95_ms": pct(0.95), "turns": float(len(values))}


TURNS = TurnLatencies()
