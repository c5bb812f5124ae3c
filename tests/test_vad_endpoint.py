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


def test_partials_start_only_while_the_voice_is_steady() -> None:
    """A partial pass starts while the last VAD window is sure of speech (≥ STEADY_SPEECH), not while the voice
    trails off: a pass started then would still run when the pause comes, and the final would wait for it."""
    import asyncio

    from appliance.voice.asr import AsrOptions, AsrResult
    from appliance.voice.listener import STEADY_SPEECH, Listener

    class Scripted:
        window = 512

        def __init__(self, probabilities: list[float]) -> None:
            self.left, self.pending = list(probabilities), 0

        def push(self, samples: np.ndarray) -> list[float]:
            self.pending += len(samples)
            out = []
            while self.pending >= self.window and self.left:
                self.pending -= self.window
                out.append(self.left.pop(0))
            return out

        def reset(self) -> None: ...

    class Recorder:  # the scheduler: when each pass was asked for, by stream position
        def __init__(self) -> None:
            self.asked: list[tuple[bool, float]] = []

        async def transcribe(self, stream: str, audio: np.ndarray, options: AsrOptions,
                             final: bool) -> AsrResult:
            self.asked.append((final, len(audio) / 16000))
            return AsrResult("words", "en", 1.0, -0.1, 0.0, 1.0, 500, compute_s=0.01, words=("words",))

        def forget(self, stream: str) -> None: ...

    window_s = 512 / 16000
    steady, trailing = [0.95] * round(0.5 / window_s), [0.7] * round(1.5 / window_s)  # 0.5 s, then 1.5 s unsure
    assert 0.5 < 0.7 < STEADY_SPEECH
    recorder = Recorder()
    vad = Scripted(steady + trailing + steady + [0.0] * 20)
    listener = Listener(Endpointer(vad, EndpointOptions()), recorder, AsrOptions(language="en"),  # type: ignore[arg-type]
                        lambda event: asyncio.sleep(0), partial_interval_s=0.6)

    async def feed() -> None:
        for _ in range(len(vad.left) * 512 // 320 + 1):
            await listener.feed(np.zeros(320, np.float32))
            await asyncio.sleep(0)  # let a started pass run
        await listener.close()

    asyncio.run(feed())
    partial_at = [seconds for final, seconds in recorder.asked if not final]
    unsure_from, unsure_to = 0.5 + 0.6, 0.5 + 1.5  # partials are due every 0.6 s of speech from its start
    assert partial_at, recorder.asked
    assert not [s for s in partial_at if unsure_from < s < unsure_to], recorder.asked  # none while it trailed
    assert any(s >= unsure_to for s in partial_at), recorder.asked  # one as soon as the voice was steady again
    assert [final for final, _ in recorder.asked].count(True) >= 1
