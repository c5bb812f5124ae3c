"""Whisper on CTranslate2 with real prompts: the fitted window, language id, translation, bad requests."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.bench.corpus import Prompt
from appliance.bench.text import normalise, wer
from appliance.voice.asr import AsrError, AsrOptions
from appliance.voice.stack import VoiceStack


def test_fast_window_matches_the_30_s_window(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    asr = stack.asr["whisper-tiny-en"]
    fast = [asr.transcribe(p.audio, AsrOptions(language="en")) for p in prompts_en]
    full = [asr.transcribe(p.audio, AsrOptions(language="en", fast_window=False)) for p in prompts_en]
    assert all(r.window_frames < 3000 or r.fell_back for r in fast)
    assert all(r.window_frames == 3000 for r in full)
    assert wer([r.text for r in full], [r.text for r in fast]) <= 0.08  # both wrong on "Agent Logged off"
    assert wer([p.text for p in prompts_en], [r.text for r in fast]) <= 0.15


def test_spanish_is_identified_and_translated_to_english(stack: VoiceStack, prompts_es: list[Prompt]) -> None:
    asr = stack.asr["whisper-base"]
    prompt = next(p for p in prompts_es if p.name == "agent-alreadyon")
    heard = asr.transcribe(prompt.audio, AsrOptions())
    assert heard.language == "es" and heard.language_probability > 0.5
    assert "agente" in normalise(heard.text)
    english = asr.transcribe(prompt.audio, AsrOptions(language="es", task="translate"))
    assert "agent" in normalise(english.text) and "agente" not in normalise(english.text)


def test_prompt_and_hotwords_are_accepted(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    asr = stack.asr["whisper-tiny-en"]
    result = asr.transcribe(prompts_en[1].audio, AsrOptions(language="en", prompt="Call center login.",
                                                             hotwords=("agent", "pound")))
    assert "agent" in normalise(result.text)


def test_english_only_model_refuses_translation(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    with pytest.raises(AsrError, match="English-only"):
        stack.asr["whisper-tiny-en"].transcribe(prompts_en[0].audio, AsrOptions(task="translate"))


def test_empty_and_non_speech_give_no_text(stack: VoiceStack) -> None:
    asr = stack.asr["whisper-tiny-en"]
    assert asr.transcribe(np.zeros(0, np.float32)).text == ""
    assert asr.transcribe(np.zeros(32000, np.float32)).text == ""
