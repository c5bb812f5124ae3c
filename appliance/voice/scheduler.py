"""One Whisper model serving many concurrent streams.

Requests run in worker threads (CTranslate2 releases the GIL). Finals go before partials, and a partial
that a newer partial of the same stream has superseded is dropped before it runs: under load a stream
gets fewer partials, never a late final.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import numpy as np

from appliance.voice.asr import AsrOptions, AsrResult, WhisperAsr


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    stream: str = field(compare=False)
    audio: np.ndarray = field(compare=False, repr=False)
    options: AsrOptions = field(compare=False)
    future: asyncio.Future[AsrResult | None] = field(compare=False, repr=False)


class AsrScheduler:
    FINAL, PARTIAL = 0, 1

    def __init__(self, asr: WhisperAsr, workers: int = 1) -> None:
        self.asr = asr
        self.workers = workers
        self._queue: asyncio.PriorityQueue[_Request] = asyncio.PriorityQueue()
        self._latest_partial: dict[str, int] = {}
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self.completed = 0
        self.dropped = 0

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"asr-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.cancel()

    async def transcribe(self, stream: str, audio: np.ndarray, options: AsrOptions, final: bool) -> AsrResult | None:
        """Queue one request; None if it was a partial superseded before it ran."""
        self.start()
        seq = next(self._seq)
        future: asyncio.Future[AsrResult | None] = asyncio.get_running_loop().create_future()
        if not final:
            self._latest_partial[stream] = seq
        self._queue.put_nowait(_Request(self.FINAL if final else self.PARTIAL, seq, stream, audio, options, future))
        return await future

    def forget(self, stream: str) -> None:
        """A stream has ended: its queued partials will be dropped."""
        self._latest_partial[stream] = -1

    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            if request.future.done():
                continue
            if request.priority == self.PARTIAL and self._latest_partial.get(request.stream) != request.seq:
                self.dropped += 1
                request.future.set_result(None)
                continue
            try:
                result = await asyncio.to_thread(self.asr.transcribe, request.audio, request.options)
            except Exception as exc:  # delivered to the stream that asked; the worker lives on
                if not request.future.done():
                    request.future.set_exception(exc)
                continue
            self.completed += 1
            if not request.future.done():
                request.future.set_result(result)
