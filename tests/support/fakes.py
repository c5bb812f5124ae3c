"""Fast stand-ins for the voice core, in the spirit of Pipecat's run_test and aiortc's dummy_connection_pair:
a listener whose hearing the test scripts, a TTS that says each word as a few samples, a stack that hands
them out, and a call control that records what the app asked of the call. Logic is tested in milliseconds
with these; the real-peer tests prove the wiring."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.calls import CallInfo
from appliance.voice.endpoint import SpeechEnded, SpeechStarted
from appliance.voice.listener import ListenerEvent, Transcript
from appliance.voice.tts import TtsChunk

_utterances = itertools.count(1)


class ScriptedListener:
    """Hears what the test says it heard: `speak()` emits a turn's events (start, end, final transcript)."""

    def __init__(self, emit: Callable[[ListenerEvent], Awaitable[None]]) -> None:
        self.emit = emit
        self.fed = 0  # samples fed (ignored otherwise)
        self.closed = False
        self.clock = 0.0

    async def feed(self, samples: np.ndarray) -> None:
        self.fed += len(samples)

    async def start(self) -> None:
        self.clock += 0.5
        await self.emit(SpeechStarted(self.clock))

    async def speak(self, text: str, provisional_first: bool = False) -> int:
        """A whole turn: speech starts, (a speculative final), speech ends, the final transcript."""
        utterance = next(_utterances)
        await self.start()
        start, self.clock = self.clock, self.clock + 1.0
        if provisional_first:
            await self.emit(Transcript(utterance, text, text, True, start, self.clock, provisional=True))
        await self.emit(SpeechEnded(self.clock, np.zeros(0, np.float32)))
        await self.emit(Transcript(utterance, text, text, True, start, self.clock))
        return utterance

    async def close(self) -> None:
        self.closed = True


class FakeTts:
    """Says each word as ``samples_per_word`` samples of a constant (so a test can tell words apart), one
    chunk per word, waiting ``delay_s`` before each chunk."""

    def __init__(self, rate: int = 16000, delay_s: float = 0.0, samples_per_word: int = 320) -> None:
        self.rate, self.delay_s, self.samples_per_word = rate, delay_s, samples_per_word
        self.streams: list[str] = []  # every text a stream was opened for

    async def stream(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        self.streams.append(text)
        for word in text.split():
            await asyncio.sleep(self.delay_s)
            audio = np.full(self.samples_per_word, 0.1, np.float32)
            yield TtsChunk(audio, self.rate, word, "fake", False)


class FakeStack:
    """What the call bot and the sessions ask of a VoiceStack: listeners and TTS streams, all fakes."""

    def __init__(self, tts: FakeTts | None = None) -> None:
        self.listeners: list[ScriptedListener] = []
        self.tts_engine = tts or FakeTts()

    def listener(self, options: Any, emit: Callable[[ListenerEvent], Awaitable[None]], partials: bool = True,
                 speculative: bool = True, endpoint: Any = None) -> ScriptedListener:
        listener = ScriptedListener(emit)
        self.listeners.append(listener)
        return listener

    def tts(self, language: str, out_rate: int | None = None, chunking: bool = True) -> FakeTts:
        return self.tts_engine


@dataclass
class FakeCallControl:
    """A call that records transfers and hang-ups; ``transfer_ok`` says how a transfer ends."""

    info: CallInfo = field(default_factory=lambda: CallInfo("call-1", "sip:caller@example.com", "100"))
    transfer_ok: bool = True
    transfers: list[str] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def transfer(self, target: str) -> bool:
        self.transfers.append(target)
        return self.transfer_ok

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self.hung_up.set()


@dataclass
class Spoken:
    """A responder's two callbacks (``output`` for captions and events, ``say`` for text to speak), recording."""

    out: list[Any] = field(default_factory=list)
    said: list[str] = field(default_factory=list)

    async def output(self, event: Any) -> None:
        self.out.append(event)

    async def say(self, text: str, utterance: int) -> None:
        self.said.append(text)
