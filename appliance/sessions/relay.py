"""A session's output for a transport that plays the speech itself (a WebRTC track, a sound card, a call's RTP):
speech into a PcmQueue, every event and each change of state as JSON."""

from __future__ import annotations

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
    The speaker reports when it has played everything (``played_out``): that ends the speaking state."""

    def __init__(self, mode: Mode, speaker: PcmQueue, send: Callable[[dict[str, Any]], None]) -> None:
        self.speaker, self.send = speaker, send
        self.states = StateTracker(mode)
        speaker.on_drained = self.played_out

    async def __call__(self, event: OutEvent) -> None:
        if isinstance(event, Speech):
            self.speaker.push(event.chunk.audio)
        elif isinstance(event, Flush):
            self.speaker.flush()
        self.send(event_json(event))
        self._state(self.states.on_event(event))

    def played_out(self) -> None:
        self._state(self.states.played_out())

    def _state(self, state: State | None) -> None:
        if state is not None:
            self.send({"type": "state", "state": state})
