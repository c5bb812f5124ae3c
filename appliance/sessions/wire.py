"""The JSON a client sees for each event of a session, the same on every transport (WebSocket, WebRTC data
channel, the kiosk's own screen); speech audio itself travels separately, per transport."""

from __future__ import annotations

from typing import Any

from appliance.voice.conversation import Caption, Flush, OutEvent, Speech
from appliance.voice.endpoint import SpeechStarted


def event_json(event: OutEvent) -> dict[str, Any]:
    """The JSON a client sees for an event (speech audio itself travels separately, per transport)."""
    if isinstance(event, Speech):
        return {"type": "audio", "utterance": event.utterance, "text": event.chunk.text, "voice": event.chunk.voice,
                "fallback": event.chunk.fallback}
    if isinstance(event, Flush):
        return {"type": "flush", "time": event.time}
    if isinstance(event, Caption):
        return {"type": "caption", "utterance": event.utterance, "source": event.source, "target": event.target,
                "final": event.final}
    return {"type": "speech_started" if isinstance(event, SpeechStarted) else "speech_ended", "time": event.time}
