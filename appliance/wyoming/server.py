"""Run the Wyoming STT and TTS servers on their usual ports until cancelled."""

from __future__ import annotations

import asyncio
import functools

from wyoming.server import AsyncServer

from appliance.voice.stack import VoiceStack
from appliance.wyoming.handlers import SttHandler, TtsHandler


async def serve(stack: VoiceStack, stt_uri: str, tts_uri: str, allow: list[str]) -> None:
    stt = AsyncServer.from_uri(stt_uri)
    tts = AsyncServer.from_uri(tts_uri)
    await asyncio.gather(
        stt.run(functools.partial(SttHandler, stack=stack, allow=allow)),
        tts.run(functools.partial(TtsHandler, stack=stack, allow=allow)),
    )
