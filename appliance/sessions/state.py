"""The listening-thinking-speaking state a screen shows for a session: a pure tracker fed with its events."""

from __future__ import annotations

from typing import Literal

from appliance.sessions.spec import Mode
from appliance.voice.conversation import Caption, Flush, OutEvent, Speech
from appliance.voice.endpoint import SpeechEnded, SpeechStarted

State = Literal["listening", "thinking", "speaking"]


class StateTracker:
    """The session state a screen shows: listening until the turn ends, thinking until the answer is heard
    (or, with nothing to say, its final caption), speaking until the transport has played it all."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.state: State = "listening"

    def on_event(self, event: OutEvent) -> State | None:
        new = self.state
        if isinstance(event, SpeechStarted | Flush):
            new = "listening"
        elif isinstance(event, SpeechEnded):
            new = "thinking"
        elif isinstance(event, Speech):
            new = "speaking"
        elif isinstance(event, Caption) and event.final and self.mode == "transcribe":
            new = "listening"
        return self._set(new)

    def played_out(self) -> State | None:
        return self._set("listening") if self.state == "speaking" else None

    def _set(self, new: State) -> State | None:
        changed, self.state = new != self.state, new
        return new if changed else None
