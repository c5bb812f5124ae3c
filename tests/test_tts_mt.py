"""Streaming TTS (Piper and the espeak-ng fallback) and translation (Bergamot, routing, upstream errors)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.audio import resample
from appliance.bench.text import normalise, wer
from appliance.bench.voice import phrase_caches
from appliance.config.upstream import UpstreamSettings
from appliance.errors import ApplianceError
from appliance.runtime.routes import Routes
from appliance.voice.asr import AsrOptions
from appliance.voice.mt import UnsupportedPair, UpstreamTranslator
from appliance.voice.stack import VoiceStack
from appliance.voice.tts import PhraseCache, TtsError, phrases

SENTENCE = "That agent is already logged on. Please enter your agent number, followed by the pound key."


def test_phrases_put_few_words_first() -> None:
    assert phrases(SENTENCE) == ["That agent is", "already logged on.", "Please enter your agent number,",
                                 "followed by the pound key."]
    assert phrases("  ") == []


def test_streaming_first_chunk_is_short_and_the_whole_is_intelligible(stack: VoiceStack) -> None:
    tts = stack.tts("en", out_rate=16000)

    async def collect() -> list[np.ndarray]:
        return [chunk.audio async for chunk in tts.stream(SENTENCE)]

    # Piper draws fresh noise on every call (its graph holds RandomNormalLike), so one rendering is a sample:
    # 55 renderings here scored WER 0-0.125 with tiny.en ("logged" heard as "log" or "logon"), one on CI 0.19
    # ("log on", "Integra"), and bad ones come in runs within a process. Judge the mean of three renderings (the
    # phrase cache off: with it, the three would be one).
    errors, heard = [], []
    for _ in range(3):
        with phrase_caches(stack, 0):
            chunks = asyncio.run(collect())
        assert len(chunks) == 4
        assert len(chunks[0]) < 0.3 * sum(len(c) for c in chunks)
        heard.append(stack.asr["whisper-tiny-en"].transcribe(np.concatenate(chunks), AsrOptions(language="en")).text)
        errors.append(wer([SENTENCE], [heard[-1]]))
    assert sum(errors) / len(errors) <= 0.15, heard


def test_closing_the_stream_stops_synthesis(stack: VoiceStack) -> None:
    voice = stack.voice("en")
    calls: list[str] = []
    original = voice.synthesize

    class Counting:
        label, language, sample_rate, fallback = voice.label, voice.language, voice.sample_rate, False

        def synthesize(self, text: str) -> np.ndarray:
            calls.append(text)
            return original(text)

    from appliance.voice.tts import StreamingTts

    async def barge_in() -> None:
        stream = StreamingTts(Counting()).stream(SENTENCE)
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0.3)

    asyncio.run(barge_in())
    assert len(calls) <= 2  # the first phrase and at most the one synthesised ahead; never the rest


def test_espeak_fallback_is_labelled(stack: VoiceStack) -> None:
    tts = stack.tts("es")
    assert tts.voice.fallback and "fallback" in tts.voice.label
    audio = tts.synthesize("Hola, buenos días.")
    assert len(audio) / tts.out_rate > 0.5 and np.abs(audio).max() > 0.05
    with pytest.raises(TtsError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(TtsError, match="no voice for 'xx'"):
        stack.voice("xx")


def test_bergamot_both_directions(stack: VoiceStack) -> None:
    router = stack.router()
    en_pt = router.route("en", "pt")
    assert "senha" in normalise(en_pt.translate("Please enter your password.", "en", "pt"))
    assert "password" in normalise(router.route("pt", "en").translate("Digite sua senha.", "pt", "en"))


def test_unsupported_pair_lists_what_is_supported(stack: VoiceStack) -> None:
    with pytest.raises(UnsupportedPair) as err:
        stack.router().route("en", "de")
    assert "en→pt" in str(err.value) and "pt→en" in str(err.value) and "→ en (Whisper)" in str(err.value)


def test_unreachable_upstream_is_a_clear_error() -> None:
    routes = Routes(UpstreamSettings(base_url="http://127.0.0.1:9/v1", api_key="sk-secret", timeout_s=1.0))
    upstream = UpstreamTranslator(routes)
    assert upstream.supports("fr", "de")  # the default route: any pair no device model serves
    with pytest.raises(ApplianceError, match="upstream translator at http://127.0.0.1:9/v1 failed") as err:
        upstream.translate("hello", "en", "pt")
    assert "sk-secret" not in str(err.value)
    assert not UpstreamTranslator(Routes(UpstreamSettings())).supports("fr", "de")  # no upstream: no pair


def test_resampled_output_for_transports(stack: VoiceStack) -> None:
    tts8k = stack.tts("en", out_rate=8000)
    audio = tts8k.synthesize("Goodbye.")
    native = stack.voice("en").synthesize("Goodbye.")
    assert abs(len(audio) - len(resample(native, 22050, 8000))) < 8000 * 0.3


def test_a_phrase_said_again_comes_from_the_cache_read_only(stack: VoiceStack) -> None:
    """A flow's greeting on every call: synthesised once, then shared (read-only); the cache keeps the most
    recently used phrases within its byte limit."""
    voice = stack.voice("en")
    greeting = "Thank you for calling. How can I help you today?"
    hits = voice.cache.hits  # type: ignore[attr-defined]
    first = voice.synthesize(greeting)
    again = voice.synthesize(greeting)
    assert again is first and voice.cache.hits == hits + 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="read-only"):
        again *= 0.5
    small = PhraseCache(limit=4 * 1000 * 4)  # four phrases of 1000 samples
    for n in range(5):
        small.put(f"phrase {n}", np.zeros(1000, np.float32))
    small.get("phrase 1")
    small.put("phrase 5", np.zeros(1000, np.float32))
    assert small.get("phrase 0") is None and small.get("phrase 2") is None and small.get("phrase 1") is not None
    assert small.size <= small.limit and small.put("long", np.zeros(2000, np.float32)).nbytes == 8000
    assert small.get("long") is None  # over a quarter of the limit: not kept


def test_callers_asking_for_a_phrase_being_synthesised_wait_for_that_synthesis() -> None:
    """Eight calls answered at once all say the greeting: one synthesis, not eight (each is a burst of memory)."""
    import threading
    import time

    cache, made = PhraseCache(), []

    def make(text: str) -> np.ndarray:
        made.append(text)
        time.sleep(0.3)
        return np.ones(100, np.float32)

    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(cache.fetch("welcome", make))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert made == ["welcome"] and len(got) == 8 and all(a is got[0] for a in got)
