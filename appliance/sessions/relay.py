"""A session's output for a transport that plays the speech itself (a WebRTC track, a sound card, a call's RTP):
speech into a PcmQueue, every event and each change of state as JSON."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from appliance.audio.queue import PcmQueue
from appliance.sessions.spec import Mode
from appliance.sessions.state import State, StateTracker
from appliance.sessions.wire import event_json
from appliance.voice.conversation import Flush, OutEvent, Speech


class EventRelay:
    """A conversation's output for a transport that plays the speech itself (a WebRTC track, a sound card):
    speech into ``speaker``, dropped on barge-in; every event, and each change of state, to ``send`` as JSON.
    Once the transport has taken everything queued (``speaker.emptied()``, whichever thread takes it), the
    speaking state ends. ``close()`` stops that watch; the session's owner calls it when the session ends."""

    def __init__(self, mode: Mode, speaker: PcmQueue, send: Callable[[dict[str, Any]], None]) -> None:
        self.speaker, self.send = speaker, send
        self.states = StateTracker(mode)
        self._watch: asyncio.Task[None] | None = None

    async def __call__(self, event: OutEvent) -> None:
        if isinstance(event, Speech):
            self.speaker.push(event.chunk.audio)
            if self._watch is None or self._watch.done():
                self._watch = asyncio.create_task(self._until_played(), name="relay-played-out")
        elif isinstance(event, Flush):
            self.speaker.flush()
        self.send(event_json(event))
        self._state(self.states.on_event(event))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _until_played(self) -> None:
        await self.speaker.emptied()
        self._state(self.states.played_out())

    def _state(self, state: State | None) -> None:
        if state is not None:
            self.send({"type": "state", "state": state})
