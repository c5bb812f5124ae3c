"""Whisper on CTranslate2 with real prompts: the fitted window, language id, translation, bad requests."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.bench.corpus import Prompt, load_prompts
from appliance.bench.text import normalise, wer
from appliance.voice.asr import AsrError, AsrOptions, AsrResult, _without_restarts
from appliance.voice.stack import VoiceStack


def test_fast_window_matches_the_30_s_window(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    asr = stack.asr["whisper-tiny-en"]
    fast = [asr.transcribe(p.audio, AsrOptions(language="en")) for p in prompts_en]
    full = [asr.transcribe(p.audio, AsrOptions(language="en", fast_window=False)) for p in prompts_en]
    assert all(r.window_frames < 3000 or r.fell_back for r in fast)
    assert all(r.window_frames == 3000 for r in full)
    assert wer([r.text for r in full], [r.text for r in fast]) <= 0.08  # both wrong on "Agent Logged off"
    assert wer([p.text for p in prompts_en], [r.text for r in fast]) <= 0.15


def test_a_fast_window_that_restarts_its_transcript_keeps_the_first_copy(stack: VoiceStack) -> None:
    """After the speech, the short window's padding makes Whisper start the transcript again; the first copy is
    the transcript (no 30 s decode, which costs 5-10x as much)."""
    asr = stack.asr["whisper-tiny-en"]
    every = {p.name: p for p in load_prompts("en", 100_000, 1.5, 4.0)}
    for name in ("tt-weasels", "vm-tohearenv"):
        audio = np.concatenate([np.zeros(5120, np.float32), every[name].audio])  # the endpointer's pre-roll
        raw = asr._decode(audio, AsrOptions(language="en"), fast=True)
        heard = asr.transcribe(audio, AsrOptions(language="en"))
        assert len(raw.words) > 2 * len(heard.words), raw.text  # it did restart (the case under test)
        assert not heard.fell_back and heard.window_frames < 3000
        assert wer([every[name].text], [heard.text]) <= 0.2, heard.text


def test_only_whole_sentence_restarts_are_cut() -> None:
    def cut(text: str) -> str:
        return _without_restarts(AsrResult(text, "en", 1.0, 0.0, 0.0, 1.0, 500, words=tuple(text.split()))).text

    assert cut("Then press pound. Then press pound. Then") == "Then press pound."
    assert cut("Which? which? Which") == "Which?"
    assert cut("Agent login Agent login.") == "Agent login Agent login."  # said twice, no sentence between
    assert cut("Yes. Yes, I said yes.") == "Yes. Yes, I said yes."
    assert cut("Press one. Then press one.") == "Press one. Then press one."


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
