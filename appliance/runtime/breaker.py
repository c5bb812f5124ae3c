"""A circuit breaker for a remote endpoint (the upstream tier): after ``failures`` failures in a row it opens and
every call is refused at once, so the local path answers without waiting for a timeout; after ``cooldown_s`` one
call is let through as a probe (half-open): its success closes the breaker, its failure opens it again. A probe
that never reports (its caller was cancelled) stands for at most another cooldown, then the next call probes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class Breaker:
    def __init__(self, name: str, failures: int = 3, cooldown_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.failures, self.cooldown_s, self._clock = name, failures, cooldown_s, clock
        self._failed = 0  # failures in a row
        self._opened_at: float | None = None
        self._probing: float | None = None  # when the probe now out was let through
        self.trips = 0  # times it opened
        self.refused = 0  # calls refused while open
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only one probe at a time)."""
        with self._lock:
            state = self._state()
            now = self._clock()
            if state == "closed" or (state == "half-open" and (self._probing is None
                                                                or now - self._probing >= self.cooldown_s)):
                self._probing = now if state == "half-open" else None
                return True
            self.refused += 1
            return False

    def succeeded(self) -> None:
        with self._lock:
            self._failed, self._opened_at, self._probing = 0, None, None

    def failed(self) -> None:
        with self._lock:
            self._failed += 1
            if self._probing is not None or (self._opened_at is None and self._failed >= self.failures):
                self.trips += self._opened_at is None
                self._opened_at = self._clock()
            self._probing = None

    def release(self) -> None:
        """The call let through never went out: a probe's turn passes to the next call."""
        with self._lock:
            self._probing = None

    def retry_in(self) -> float:
        """Seconds until the next probe may go out (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def snapshot(self) -> dict[str, object]:
        """For /health, `appliance doctor` and the call record."""
        with self._lock:
            return {"name": self.name, "state": self._state(), "failures_in_a_row": self._failed,
                    "trips": self.trips, "refused": self.refused}
