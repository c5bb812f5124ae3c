"""Speech waiting to be played: int16 chunks taken in fixed-size frames, padded with silence when short.

Safe across threads (a sound card's callback takes while the event loop pushes); ``flush`` drops it all
(barge-in); ``emptied()`` lets any number of coroutines, on any event loop, wait until the last queued speech
has been taken (or flushed), whichever thread takes it."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import numpy as np

from appliance.audio.frame import float_to_int16


class PcmQueue:
    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

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
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    async def emptied(self) -> None:
        """Until everything queued so far has been taken (or flushed)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._chunks:
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        await future

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
            waiters, self._waiters = (self._waiters, []) if drained else ([], self._waiters)
        _wake(waiters)
        return out


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:  # from whichever thread took the audio
        loop.call_soon_threadsafe(_settle, future)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have been cancelled meanwhile
        future.set_result(None)
