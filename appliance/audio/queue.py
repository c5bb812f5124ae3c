"""Speech waiting to be played: int16 chunks taken in fixed-size frames, padded with silence when short.

Safe across threads (a sound card's callback takes while the event loop pushes); ``flush`` drops it all
(barge-in)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from appliance.audio.frame import float_to_int16


class PcmQueue:
    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()

    def push(self, audio: np.ndarray) -> None:
        samples = float_to_int16(audio)
        with self._lock:
            self._chunks.append(samples)

    def flush(self) -> None:
        with self._lock:
            self._chunks.clear()

    def take(self, n: int) -> tuple[np.ndarray, bool, bool]:
        """``n`` samples (silence where nothing is queued), whether any were speech, and whether that emptied
        the queue."""
        out = np.zeros(n, np.int16)
        filled = 0
        with self._lock:
            had = bool(self._chunks)
            while filled < n and self._chunks:
                chunk = self._chunks[0]
                take = min(n - filled, len(chunk))
                out[filled:filled + take] = chunk[:take]
                filled += take
                if take == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[take:]
            return out, had, had and not self._chunks
