"""Full duplex for one stream: audio in → listener → a responder's text → streaming TTS → audio out.

Barge-in: when the listener hears speech start while the device is speaking, the TTS stream is closed
and a Flush tells the transport to drop what it has buffered, so playout stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from appliance.voice.endpoint import SpeechEnded, SpeechResumed, SpeechStarted
from appliance.voice.listener import Listener, ListenerEvent, Transcript
from appliance.voice.tts import StreamingTts, TtsChunk
from appliance.voice.turns import TURNS


@dataclass(frozen=True)
class Speech:
    """Synthesised audio to play, in order."""

    chunk: TtsChunk
    utterance: int  # the user's utterance this answers
    first: bool  # the first chunk of a response
    produced_at: float  # time.monotonic() when it was ready


@dataclass(frozen=True)
class Flush:
    """Drop any buffered playout now (barge-in)."""

    time: float  # stream time of the speech that interrupted


@dataclass(frozen=True)
class Caption:
    """Text for the screen: what was heard and, when interpreting, what it means."""

    utterance: int
    source: str
    target: str | None
    final: bool


OutEvent = Speech | Flush | Caption | SpeechStarted | SpeechEnded
Output = Callable[[OutEvent], Awaitable[None]]
# Turns a transcript into text to speak (None: say nothing), may also emit captions.
Responder = Callable[[Transcript], Awaitable[str | None]]
# Side-effect-free guess of what the responder will say for a final, used on a speculative final to
# synthesise the first phrase while the endpointer's hangover is still running.
Predictor = Callable[[Transcript], str | None]


@dataclass
class _Prepared:
    utterance: int
    text: str
    task: asyncio.Task[tuple[AsyncGenerator[TtsChunk, None], TtsChunk | None]]


class Conversation:
    def __init__(self, make_listener: Callable[[Callable[[ListenerEvent], Awaitable[None]]], Listener],
                 tts: StreamingTts, respond: Responder, output: Output, barge_in: bool = True,
                 predict: Predictor | None = None) -> None:
        self.listener = make_listener(self._on_listener)
        self.tts = tts
        self.respond = respond
        self.predict = predict
        self._prepared: _Prepared | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.output = output
        self.barge_in = barge_in
        self._speaking: asyncio.Task[None] | None = None
        # answers to speak, each with the barge-in generation it was queued in: one queued before the latest
        # interruption is dropped even if the speaker loop had already taken it off the queue
        self._queue: asyncio.Queue[tuple[int, str, _Prepared | None, int]] = asyncio.Queue()
        self._generation = 0
        self._speaker = asyncio.create_task(self._speak_loop(), name="conversation-speaker")
        self.barge_ins = 0
        self._starts = 0  # SpeechStarted events seen: an answer made while the user started again is stale
        self._ended_at: float | None = None  # when the last turn was confirmed over, until its answer sounds
        self.latencies = TURNS

    async def feed(self, samples: np.ndarray) -> None:
        await self.listener.feed(samples)

    async def say(self, text: str, utterance: int = 0) -> None:
        """Queue text to speak after what is already queued (used by responders that speak early)."""
        await self._queue.put((utterance, text, None, self._generation))

    async def interrupt(self) -> None:
        """Stop speaking now, as barge-in does (a key pressed during a prompt)."""
        await self._interrupt(0.0)

    async def drained(self) -> None:
        """Until every answer queued so far has been synthesised and handed to the output (or interrupted)."""
        await self._queue.join()

    async def close(self, drain: bool = False) -> None:
        """End the stream: pending finals are still answered; with ``drain`` the answers are spoken to the
        end, otherwise speech in progress stops (a hung-up caller hears nothing anyway)."""
        await self.listener.close()
        self._drop_prepared()
        if drain:
            await self._queue.join()
        for task in (self._speaker, self._speaking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _on_listener(self, event: ListenerEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._starts += 1
            self._drop_prepared()
            if self.barge_in:
                await self._interrupt(event.time)
            await self.output(event)
        elif isinstance(event, SpeechResumed):
            self._drop_prepared()
        elif isinstance(event, SpeechEnded):
            self._ended_at = time.monotonic()
            await self.output(event)
        elif event.provisional:
            text = self.predict(event) if self.predict else None
            if text:
                self._drop_prepared()
                self._prepared = _Prepared(event.utterance, text, asyncio.create_task(self._prepare(text)))
        else:
            starts = self._starts
            text = await self.respond(event)
            if self.barge_in and self._starts != starts:  # interrupted while answering: _interrupt ran already
                text = None
            prepared, self._prepared = self._prepared, None
            if prepared is not None and (prepared.utterance, prepared.text) != (event.utterance, text):
                self._discard(prepared)
                prepared = None
            if text:
                await self._queue.put((event.utterance, text, prepared, self._generation))

    def _drop_prepared(self) -> None:
        if self._prepared is not None:
            self._discard(self._prepared)
            self._prepared = None

    def _discard(self, prepared: _Prepared) -> None:
        """Abandon a prepared answer; a started TTS stream is closed (its lookahead cancelled) in the background."""
        prepared.task.cancel()
        if prepared.task.done() and not prepared.task.cancelled() and prepared.task.exception() is None:
            stream, _ = prepared.task.result()
            closing = asyncio.create_task(stream.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _prepare(self, text: str) -> tuple[AsyncGenerator[TtsChunk, None], TtsChunk | None]:
        stream = self.tts.stream(text)
        first = await anext(stream, None)
        return stream, first

    async def _interrupt(self, time_s: float) -> None:
        dropped = 0
        self._generation += 1
        while not self._queue.empty():
            _, _, prepared, _ = self._queue.get_nowait()
            if prepared is not None:
                self._discard(prepared)
            self._queue.task_done()
            dropped += 1
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()
            dropped += 1
        self.barge_ins += bool(dropped)
        # Synthesis runs ahead of playout: the transport may hold audio even when nothing is being made.
        await self.output(Flush(time_s))

    async def _speak_loop(self) -> None:
        while True:
            utterance, text, prepared, generation = await self._queue.get()
            if generation != self._generation:  # interrupted between the queue and here
                if prepared is not None:
                    self._discard(prepared)
                self._queue.task_done()
                continue
            self._speaking = asyncio.create_task(self._speak(utterance, text, prepared))
            try:
                # wait() returns when the answer is done or interrupted, and raises only if this loop
                # itself is cancelled (close), which must not be swallowed.
                await asyncio.wait({self._speaking})
            finally:
                self._queue.task_done()

    async def _emit(self, speech: Speech) -> None:
        if speech.first and self._ended_at is not None:  # the answer to the turn that just ended: its latency
            self.latencies.add(speech.produced_at - self._ended_at)
            self._ended_at = None
        await self.output(speech)

    async def _speak(self, utterance: int, text: str, prepared: _Prepared | None) -> None:
        first = True
        stream: AsyncGenerator[TtsChunk, None] | None = None
        if prepared is not None:
            try:
                stream, chunk = await prepared.task
            except Exception:  # a failed preparation is redone below, never lost
                stream = None
            else:
                if chunk is not None:
                    await self._emit(Speech(chunk, utterance, True, time.monotonic()))
                    first = False
        if stream is None:
            stream = self.tts.stream(text)
        try:
            async for chunk in stream:
                await self._emit(Speech(chunk, utterance, first, time.monotonic()))
                first = False
        finally:
            await stream.aclose()
