"""The voice core's shared models, loaded once per device, and the per-stream objects built on them.

The composition root (appliance.device) hands in loaded handles; nothing here knows runtimes or stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from appliance.runtime.base import TensorSession
from appliance.voice.asr import AsrError, AsrOptions, WhisperAsr
from appliance.voice.endpoint import Endpointer, EndpointOptions
from appliance.voice.listener import Emit, Escalate, Listener
from appliance.voice.mt import MtRouter, Translator
from appliance.voice.scheduler import AsrScheduler
from appliance.voice.tts import EspeakVoice, StreamingTts, TtsError, Voice
from appliance.voice.vad import SileroVad, Vad, WebRtcVad


@dataclass
class VoiceStack:
    asr: dict[str, WhisperAsr]  # by model id: an English-only one first, then multilingual ones
    vad_session: TensorSession | None
    voices: dict[str, Voice]  # by language: neural voices
    translators: list[Translator]
    vad_kind: Literal["silero", "webrtc"] = "silero"
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)
    partial_interval_s: float = 0.6
    tts_first_words: int = 3
    # one scheduler per model and event loop: its queue and workers belong to the loop that made them
    schedulers: dict[tuple[str, asyncio.AbstractEventLoop], AsrScheduler] = field(default_factory=dict)
    _fallbacks: dict[str, Voice] = field(default_factory=dict)
    release: Callable[[], None] = lambda: None  # let go of the models this stack keeps resident (once replaced)
    escalate: Escalate | None = None  # unsure finals to the upstream tier's Whisper (the device's asr routes)

    def new_vad(self) -> Vad:
        if self.vad_kind == "silero" and self.vad_session is not None:
            return SileroVad(self.vad_session)
        return WebRtcVad()

    def asr_model(self, language: str | None, task: str) -> str:
        """English transcription prefers an English-only model; anything else needs a multilingual one."""
        for model_id, asr in self.asr.items():
            if asr.multilingual or (language == "en" and task == "transcribe"):
                return model_id
        raise AsrError(f"no ASR model for {task} of {language or 'any language'}; provisioned: "
                       f"{', '.join(self.asr) or 'none'} (fix: appliance models pull whisper-base)")

    def scheduler(self, model_id: str) -> AsrScheduler:
        key = (model_id, asyncio.get_running_loop())
        if key not in self.schedulers:
            self.schedulers[key] = AsrScheduler(self.asr[model_id])
        return self.schedulers[key]

    def listener(self, options: AsrOptions, emit: Emit, partials: bool = True, speculative: bool = True,
                 endpoint: EndpointOptions | None = None) -> Listener:
        model_id = self.asr_model(options.language, options.task)
        if not self.asr[model_id].multilingual:
            options = dataclasses.replace(options, language="en")
        return Listener(Endpointer(self.new_vad(), endpoint or self.endpoint), self.scheduler(model_id), options,
                        emit, partial_interval_s=self.partial_interval_s, partials=partials, speculative=speculative,
                        escalate=self.escalate)

    def voice(self, language: str) -> Voice:
        """The neural voice for a language, else the espeak-ng fallback (labelled as such)."""
        if language in self.voices:
            return self.voices[language]
        if language not in self._fallbacks:
            try:
                self._fallbacks[language] = EspeakVoice(language)
            except TtsError:
                have = ", ".join(self.voices) or "none"
                raise TtsError(f"no voice for '{language}' (neural voices: {have}; espeak-ng has none either)") \
                    from None
        return self._fallbacks[language]

    def tts(self, language: str, out_rate: int | None = None, chunking: bool = True) -> StreamingTts:
        return StreamingTts(self.voice(language), out_rate, first_words=self.tts_first_words, chunking=chunking)

    def router(self) -> MtRouter:
        return MtRouter(self.translators, speech_to_english=any(a.multilingual for a in self.asr.values()))

    async def stop(self) -> None:
        """Stop the schedulers' workers of the running event loop; forget those of loops already closed."""
        loop = asyncio.get_running_loop()
        for key in list(self.schedulers):
            if key[1] is loop:
                await self.schedulers.pop(key).stop()
            elif key[1].is_closed():
                del self.schedulers[key]
