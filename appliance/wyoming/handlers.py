"""Wyoming event handlers: Describe → Info; Transcribe + audio → Transcript (also streamed per utterance);
Synthesize (or the streaming SynthesizeStart/Chunk/Stop) → AudioStart, AudioChunk…, AudioStop.

The handlers get the voice stack from a `StackSource`: under `appliance run` the servers listen before the
models are warm, and a request that comes meanwhile waits for them a little (``WARM_WAIT_S``), then gets an
Error event with code "models-unavailable" saying why (still loading: retry; or failed).

The protocol has no authentication: the servers listen on loopback by default and accept only clients
from an allow-list of addresses (see README: wyoming.allow).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from appliance import __version__
from appliance.audio import ASR_RATE, resample
from appliance.errors import ApplianceError
from appliance.voice.asr import AsrOptions
from appliance.voice.offline import segments
from appliance.voice.stack import VoiceStack

log = logging.getLogger(__name__)
ATTRIBUTION = Attribution(name="edge voice appliance", url="https://example.invalid/appliance")
MAX_AUDIO_S = 120.0
CHUNK_SAMPLES = 1024
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
StackSource = Callable[[], Awaitable[VoiceStack]]  # VoiceModels.wait: the stack, waiting a little while it warms


def describe(stack: VoiceStack) -> Info:
    asr = [AsrModel(name=model_id, attribution=ATTRIBUTION, installed=True, description=model_id,
                    version=__version__, languages=["en"] if not asr.multilingual else ["multilingual"])
           for model_id, asr in stack.asr.items()]
    voices = [TtsVoice(name=voice.label, attribution=ATTRIBUTION, installed=True, description=voice.label,
                       version=__version__, languages=[language]) for language, voice in stack.voices.items()]
    return Info(
        asr=[AsrProgram(name="appliance-whisper", attribution=ATTRIBUTION, installed=True, version=__version__,
                        description="Whisper on CTranslate2", models=asr, supports_transcript_streaming=True)],
        tts=[TtsProgram(name="appliance-piper", attribution=ATTRIBUTION, installed=True, version=__version__,
                        description="Piper, streamed by phrase", voices=voices, supports_synthesize_streaming=True)],
    )


class _Guarded(AsyncEventHandler):
    """Refuses clients whose address is not allowed, before reading anything; counts open sessions (a drain
    waits for them)."""

    def __init__(self, *args: Any, stack: StackSource, allow: list[str], sessions: set[Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source, self.sessions = stack, sessions if sessions is not None else set()
        peer = self.writer.get_extra_info("peername") or ("?",)
        self.allowed = not allow or str(peer[0]) in allow
        if not self.allowed:
            log.warning("wyoming: refused client %s (not in wyoming.allow)", peer[0])

    async def run(self) -> None:
        if not self.allowed:
            self.writer.close()
            return
        self.sessions.add(self)
        try:
            await super().run()
        finally:
            self.sessions.discard(self)

    async def stack(self) -> VoiceStack | None:
        """The stack, or None once an Error event has told the client why there is none."""
        try:
            return await self.source()
        except ApplianceError as exc:
            await self.write_event(Error(text=str(exc), code="models-unavailable").event())
            return None

    async def describe(self) -> None:
        stack = await self.stack()
        if stack is not None:
            await self.write_event(describe(stack).event())


class SttHandler(_Guarded):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.language: str | None = None
        self.rate = ASR_RATE
        self.pieces: list[np.ndarray] = []
        self.samples = 0

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.describe()
        elif Transcribe.is_type(event.type):
            self.language = Transcribe.from_event(event).language
        elif AudioStart.is_type(event.type):
            self.rate, self.pieces, self.samples = AudioStart.from_event(event).rate, [], 0
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if chunk.width != 2:
                await self.write_event(Error(text="audio must be 16-bit PCM", code="bad-audio").event())
                return False
            pcm = np.frombuffer(chunk.audio, "<i2").reshape(-1, chunk.channels)[:, 0]
            self.rate = chunk.rate
            self.samples += len(pcm)
            if self.samples > MAX_AUDIO_S * chunk.rate:
                await self.write_event(Error(text=f"audio over {MAX_AUDIO_S:.0f} s", code="too-long").event())
                return False
            self.pieces.append(pcm.astype(np.float32) / 32768)
        elif AudioStop.is_type(event.type):
            await self._transcribe()
        return True

    async def _transcribe(self) -> None:
        audio = np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)
        audio = resample(audio, self.rate, ASR_RATE) if self.rate != ASR_RATE else audio
        stack, language = await self.stack(), self.language
        if stack is None:
            return

        def work() -> list[str]:
            asr = stack.asr[stack.asr_model(language, "transcribe")]
            options = AsrOptions(language=language)
            return [t for s in segments(audio, stack.new_vad()) if (t := asr.transcribe(s.audio, options).text)]

        try:
            texts = await asyncio.to_thread(work)
        except ApplianceError as exc:
            await self.write_event(Error(text=str(exc), code="asr").event())
            return
        await self.write_event(TranscriptStart(language=language).event())
        for text in texts:
            await self.write_event(TranscriptChunk(text=text + " ").event())
        await self.write_event(TranscriptStop().event())
        await self.write_event(Transcript(text=" ".join(texts)).event())


class TtsHandler(_Guarded):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streaming = False
        self.pending = ""
        self.language = "en"

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.describe()
        elif Synthesize.is_type(event.type):
            if not self.streaming:  # during a streaming session the client also sends the whole text: ignore
                request = Synthesize.from_event(event)
                await self._speak(request.text, _language(request.voice), start=True, stop=True)
        elif SynthesizeStart.is_type(event.type):
            start = SynthesizeStart.from_event(event)
            self.streaming, self.pending, self.language = True, "", _language(start.voice)
            await self._begin()
        elif SynthesizeChunk.is_type(event.type):
            self.pending += SynthesizeChunk.from_event(event).text
            *done, self.pending = _SENTENCE_END.split(self.pending)
            for sentence in done:
                await self._speak(sentence, self.language)
        elif SynthesizeStop.is_type(event.type):
            if self.pending.strip():
                await self._speak(self.pending, self.language)
            self.streaming, self.pending = False, ""
            await self.write_event(AudioStop().event())
            await self.write_event(SynthesizeStopped().event())
        return True

    async def _begin(self) -> None:
        stack = await self.stack()
        if stack is None:
            return
        voice = stack.voice(self.language)
        await self.write_event(AudioStart(rate=voice.sample_rate, width=2, channels=1).event())

    async def _speak(self, text: str, language: str, start: bool = False, stop: bool = False) -> None:
        stack = await self.stack()
        if stack is None:
            return
        try:
            tts = stack.tts(language)
        except ApplianceError as exc:
            await self.write_event(Error(text=str(exc), code="no-voice").event())
            return
        if start:
            await self.write_event(AudioStart(rate=tts.out_rate, width=2, channels=1).event())
        stream = tts.stream(text)
        try:
            async for chunk in stream:
                pcm = (np.clip(chunk.audio, -1, 1) * 32767).astype("<i2")
                for i in range(0, len(pcm), CHUNK_SAMPLES):
                    await self.write_event(AudioChunk(rate=tts.out_rate, width=2, channels=1,
                                                      audio=pcm[i : i + CHUNK_SAMPLES].tobytes()).event())
        finally:
            await stream.aclose()
        if stop:
            await self.write_event(AudioStop().event())


def _language(voice: Any) -> str:
    language = getattr(voice, "language", None) or "en"
    return str(language).split("_")[0].split("-")[0]
