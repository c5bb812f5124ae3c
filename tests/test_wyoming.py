"""Wyoming servers tested with the wyoming client the way Home Assistant uses them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.server import AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from appliance.audio import read_audio
from appliance.bench.text import normalise
from appliance.ports import free_port
from appliance.voice.asr import AsrOptions
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from appliance.wyoming.handlers import SttHandler, TtsHandler

EN = Path("/usr/share/asterisk/sounds/en")


def with_server(stack: VoiceStack, handler: type, test: Callable[[str], Awaitable[None]],
                allow: list[str] | None = None) -> None:
    async def run() -> None:
        uri = f"tcp://127.0.0.1:{free_port()}"
        server = AsyncServer.from_uri(uri)
        task = asyncio.create_task(server.run(functools.partial(handler, stack=VoiceModels.of(stack).wait,
                                                                allow=["127.0.0.1"] if allow is None else allow)))
        await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(test(uri), timeout=120)
        finally:
            task.cancel()
            await stack.stop()

    asyncio.run(run())


async def read_until(client: AsyncClient, kind: str) -> list[Event]:
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, "server closed the connection"
        events.append(event)
        if event.type == kind:
            return events


def test_describe_and_transcribe(stack: VoiceStack) -> None:
    async def real(uri: str) -> None:
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, "info"))[-1])
            assert info.asr and info.asr[0].supports_transcript_streaming and info.asr[0].models
            pcm = (read_audio(EN / "agent-alreadyon.wav", 16000).samples * 32767).astype("<i2").tobytes()
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            for i in range(0, len(pcm), 2048):
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 2048]).event())
            await client.write_event(AudioStop().event())
            events = await read_until(client, "transcript")
            assert any(TranscriptStart.is_type(e.type) for e in events)
            assert any(TranscriptChunk.is_type(e.type) for e in events)
            assert "agent number" in normalise(Transcript.from_event(events[-1]).text)

    with_server(stack, SttHandler, real)


def test_synthesize_and_streaming_synthesis(stack: VoiceStack) -> None:
    async def test(uri: str) -> None:
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Synthesize(text="Turning on the kitchen lights.",
                                                voice=SynthesizeVoice(language="en_US")).event())
            events = await read_until(client, "audio-stop")
            start = AudioStart.from_event(events[0])
            audio = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
            samples = np.frombuffer(audio, "<i2").astype(np.float32) / 32768
            from appliance.audio import resample

            heard = stack.asr["whisper-tiny-en"].transcribe(resample(samples, start.rate, 16000),
                                                            AsrOptions(language="en")).text
            assert "kitchen" in normalise(heard)

            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(language="en")).event())
            for piece in ("The weather ", "is sunny. ", "Tomorrow it ", "will rain."):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text="The weather is sunny. Tomorrow it will rain.").event())
            await client.write_event(SynthesizeStop().event())
            events = await read_until(client, SynthesizeStopped().event().type)
            kinds = [e.type for e in events]
            assert kinds[0] == "audio-start" and kinds.count("audio-start") == 1 and "audio-stop" in kinds
            assert sum(len(AudioChunk.from_event(e).audio) for e in events if AudioChunk.is_type(e.type)) > 22050

    with_server(stack, TtsHandler, test)


def test_clients_outside_the_allow_list_are_refused(stack: VoiceStack) -> None:
    async def test(uri: str) -> None:
        answer: Event | None = None
        try:
            async with AsyncClient.from_uri(uri) as client:
                await client.write_event(Describe().event())
                answer = await client.read_event()
        except (ConnectionResetError, BrokenPipeError):
            answer = None
        assert answer is None  # closed without an answer

    with_server(stack, SttHandler, test, allow=["192.0.2.1"])
