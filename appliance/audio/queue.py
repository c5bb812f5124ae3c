"""Speech waiting to be played: int16 chunks taken in fixed-size frames, padded with silence when short.

Safe across threads (a sound card's callback takes while the event loop pushes); ``flush`` drops it all
(barge-in); ``on_drained`` is called, from the taking thread, when the last queued speech has been taken."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from appliance.audio.frame import float_to_int16


class PcmQueue:
    def __init__(self, on_drained: Callable[[], None] | None = None) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self.on_drained = on_drained

    def push(self, audio: np.ndarray) -> None:
        samples = float_to_int16(audio)
        with self._lock:
            self._chunks.append(samples)

    def empty(self) -> bool:
        with self._lock:
            return not self._chunks

    def flush(self) -> None:
        with self._lock:
            self._chunks.clear()

    def take(self, n: int) -> np.ndarray:
        """``n`` samples: queued speech, then silence."""
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
            drained = had and not self._chunks
        if drained and self.on_drained is not None:
            self.on_drained()
        return out
