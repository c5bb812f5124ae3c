"""VAD and endpointing on real speech: starts, pauses before ends, resumes, forced ends."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.bench.corpus import Prompt, last_speech_sample
from appliance.voice.endpoint import (
    Endpointer,
    EndpointOptions,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
)
from appliance.voice.stack import VoiceStack
from appliance.voice.vad import WebRtcVad

SILENCE = np.zeros(16000, np.float32)


def run(endpointer: Endpointer, audio: np.ndarray) -> list[object]:
    events: list[object] = []
    for i in range(0, len(audio), 320):
        events += endpointer.process(audio[i : i + 320])
    return events


@pytest.mark.parametrize("kind", ["silero", "webrtc"])
def test_one_prompt_is_one_turn(stack: VoiceStack, prompts_en: list[Prompt], kind: str) -> None:
    prompt = next(p for p in prompts_en if p.name == "agent-loginok")
    vad = stack.new_vad() if kind == "silero" else WebRtcVad()
    endpointer = Endpointer(vad, EndpointOptions(hangover_ms=400))
    events = run(endpointer, np.concatenate([SILENCE, prompt.audio, SILENCE]))
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechEnded
    assert kinds.count(SpeechStarted) == 1 and kinds.count(SpeechEnded) == 1
    start = events[0]
    assert isinstance(start, SpeechStarted) and 0.9 <= start.time <= 1.3
    end = events[-1]
    assert isinstance(end, SpeechEnded)
    speech_end = 1.0 + last_speech_sample(prompt.audio) / 16000
    pause = [e for e in events if isinstance(e, SpeechPaused)][-1]
    assert abs(pause.time - speech_end) < 0.15  # the speculative final can start right at the end of speech
    assert end.time - pause.time == pytest.approx(0.4, abs=0.05)  # the hangover, overlapped with decoding
    assert len(end.audio) >= len(prompt.audio) * 0.9


def test_short_gap_resumes_instead_of_ending(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    a, b = prompts_en[0].audio, prompts_en[1].audio
    gap = np.zeros(int(0.12 * 16000), np.float32)
    events = run(Endpointer(stack.new_vad(), EndpointOptions(hangover_ms=300)), np.concatenate([SILENCE, a, gap, b,
                                                                                                 SILENCE]))
    assert sum(isinstance(e, SpeechResumed) for e in events) >= 1
    assert sum(isinstance(e, SpeechEnded) for e in events) == 1


def test_long_speech_is_cut_at_the_limit(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    audio = np.concatenate([p.audio for p in prompts_en[:6]])
    events = run(Endpointer(stack.new_vad(), EndpointOptions(max_utterance_s=3.0, hangover_ms=5000)), audio)
    forced = [e for e in events if isinstance(e, SpeechEnded) and e.forced]
    assert forced and all(len(e.audio) <= 3.1 * 16000 for e in forced)


def test_silence_and_noise_are_not_speech(stack: VoiceStack) -> None:
    noise = np.random.default_rng(1).normal(0, 0.005, 3 * 16000).astype(np.float32)
    assert run(Endpointer(stack.new_vad()), np.concatenate([SILENCE, noise])) == []
