"""The echo bot: says back what it heard. The smallest real assistant, and the latency benchmark's subject."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from appliance.voice.conversation import Caption, OutEvent
from appliance.voice.listener import Transcript


class EchoBot:
    def __init__(self, output: Callable[[OutEvent], Awaitable[None]]) -> None:
        self.output = output

    async def respond(self, transcript: Transcript) -> str | None:
        await self.output(Caption(transcript.utterance, transcript.text, None, transcript.final))
        return self.predict(transcript)

    def predict(self, transcript: Transcript) -> str | None:
        return transcript.text if transcript.final and transcript.text else None
