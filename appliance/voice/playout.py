"""Playout: paces synthesised speech out as real-time frames for a transport, and drops it at once on Flush."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from appliance.audio import AudioFrame
from appliance.voice.conversation import Flush, OutEvent, Speech

Sink = Callable[[AudioFrame, int], Awaitable[None]]  # a frame, and the utterance it answers


class Playout:
    def __init__(self, sink: Sink, sample_rate: int, frame_ms: int = 20) -> None:
        self.sink = sink
        self.sample_rate = sample_rate
        self.frame = sample_rate * frame_ms // 1000
        self._frames: deque[tuple[np.ndarray, int]] = deque()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="playout")
        self.played = 0
        self.flushed = 0

    async def handle(self, event: OutEvent) -> None:
        if isinstance(event, Speech):
            audio = event.chunk.audio
            for i in range(0, len(audio), self.frame):
                piece = audio[i : i + self.frame]
                self._frames.append((np.pad(piece, (0, self.frame - len(piece))), event.utterance))
            self._ready.set()
        elif isinstance(event, Flush):
            self.flushed += len(self._frames)
            self._frames.clear()

    @property
    def busy(self) -> bool:
        return bool(self._frames)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        period = self.frame / self.sample_rate
        next_at = time.monotonic()
        while True:
            if not self._frames:
                self._ready.clear()
                await self._ready.wait()
                next_at = time.monotonic()
            samples, utterance = self._frames.popleft()
            await self.sink(AudioFrame.from_float32(samples, self.sample_rate, self.played * period), utterance)
            self.played += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
