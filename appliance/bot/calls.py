"""Call applications that need no flow: a session mode on a call (echo, interpret, transcribe) and an
announcement that says one text and hangs up. The interface they implement is `appliance.calls`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.audio.queue import PcmQueue
from appliance.calls import CallApp, CallAppFactory, CallControl
from appliance.sessions import EventRelay, SessionSpec, open_conversation
from appliance.voice.stack import VoiceStack


class ModeCallApp:
    """A call running one of the session modes (echo, interpret, transcribe) on the shared voice core."""

    def __init__(self, stack: VoiceStack, spec: SessionSpec, speaker: PcmQueue, rate: int,
                 send: Callable[[dict[str, Any]], None] = lambda event: None) -> None:
        self.relay = EventRelay(spec.mode, speaker, send)
        # on a call only interpretation speaks before the turn ends, from partials; the rest needs finals only
        self.conversation = open_conversation(stack, spec, self.relay, rate, partials=spec.mode == "interpret")

    async def answered(self) -> None:
        return None

    async def feed(self, samples: np.ndarray) -> None:
        await self.conversation.feed(samples)

    async def dtmf(self, digit: str) -> None:
        return None

    async def close(self) -> None:
        await self.conversation.close()
        await self.relay.close()


class Announcement:
    """Says one text when the call is up, waits until it has been played, then hangs up."""

    def __init__(self, stack: VoiceStack, text: str, language: str, control: CallControl, speaker: PcmQueue,
                 rate: int) -> None:
        self.tts = stack.tts(language, out_rate=rate)
        self.text, self.control, self.speaker, self.rate = text, control, speaker, rate
        self.played = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def answered(self) -> None:
        self._task = asyncio.create_task(self._say())

    async def _say(self) -> None:
        async for chunk in self.tts.stream(self.text):
            self.speaker.push(chunk.audio)
        self.speaker.push(np.zeros(self.rate // 5, np.int16))  # 200 ms of silence: its draining ends the speech
        await self.speaker.emptied()
        self.played.set()
        await self.control.hangup("announcement played")

    async def feed(self, samples: np.ndarray) -> None:
        return None

    async def dtmf(self, digit: str) -> None:
        return None

    async def close(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def announcement_factory(stack: VoiceStack, text: str, language: str = "en") -> CallAppFactory:
    async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
        return Announcement(stack, text, language, control, speaker, rate)
    return make


def mode_app_factory(stack: VoiceStack, spec: SessionSpec) -> CallAppFactory:
    async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
        return ModeCallApp(stack, spec, speaker, rate)
    return make
