"""`appliance bench voice`: voice-to-voice latency of the streaming pipeline against a naive baseline with
the same models, measured in one run on real speech fed in real time; WER; TTS first audio and speed;
a TTS → ASR round trip.

Latency of a turn = the moment the frame holding the prompt's last speech sample is fed → the moment the
first synthesised chunk after it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from appliance.audio import resample
from appliance.bench.corpus import Prompt, last_speech_sample, load_prompts, transcripts
from appliance.bench.text import chrf, wer
from appliance.sessions import EchoBot, Interpreter
from appliance.voice.asr import AsrOptions
from appliance.voice.conversation import Conversation, OutEvent, Speech
from appliance.voice.endpoint import EndpointOptions
from appliance.voice.listener import Transcript
from appliance.voice.stack import VoiceStack
from appliance.voice.tts import PhraseCache, PiperVoice

FRAME = 320  # 20 ms at 16 kHz
LEAD_S, TAIL_S = 0.5, 2.0


@dataclass(frozen=True)
class Mode:
    name: str
    speculative: bool  # final pass starts at the first silent window
    fast_window: bool  # encoder window sized to the utterance
    chunking: bool  # TTS speaks phrase by phrase
    partials: bool
    hangover_ms: int | None  # None: the configured voice.hangover_ms
    rejoin: bool = True  # a turn cut by a pause a little over the hangover is continued (voice.rejoin_ms)


STREAMING = Mode("streaming", True, True, True, True, None)
# What a typical voice-agent stack does: confirm the end of speech, transcribe with the 30 s window,
# synthesise the whole answer before any sound.
NAIVE = Mode("naive", False, False, False, False, 250, rejoin=False)


@dataclass
class Turn:
    prompt: str
    latency_s: float | None
    heard: str
    said: str
    sound_lead_s: float | None = None  # from the first answer chunk's start to its first audible sample


async def run_turn(stack: VoiceStack, prompt: Prompt, task: str, mode: Mode) -> Turn:
    """Feed one prompt in real time through a conversation; measure from its last speech sample."""
    said: list[str] = []
    heard: dict[int, str] = {}  # by utterance: a rejoined turn's last final is the whole of it
    first_after: list[float] = []
    last_fed: list[float] = []
    lead: list[float] = []

    async def output(event: OutEvent) -> None:
        if isinstance(event, Speech):
            if last_fed and not first_after:
                first_after.append(event.produced_at)
                lead[:] = [audible_from(event.chunk.audio) / event.chunk.sample_rate]
            said.append(event.chunk.text)

    async def keep_final(t: Transcript) -> None:
        if t.final and not t.provisional and t.text:
            heard[t.utterance] = t.text

    options = AsrOptions(language=prompt.language, task="translate" if task == "interpret" else "transcribe",
                         fast_window=mode.fast_window)
    endpoint = EndpointOptions(hangover_ms=mode.hangover_ms or stack.endpoint.hangover_ms,
                               rejoin_ms=stack.endpoint.rejoin_ms if mode.rejoin else 0)
    tts = stack.tts("en", chunking=mode.chunking)
    conversation: Conversation

    async def say(text: str, utterance: int) -> None:
        await conversation.say(text, utterance)

    bot: EchoBot | Interpreter = EchoBot(output) if task == "echo" else Interpreter(prompt.language, "en", None,
                                                                                 output, say, early=mode.partials)

    async def respond(t: Transcript) -> str | None:
        await keep_final(t)
        return await bot.respond(t)

    conversation = Conversation(
        lambda emit: stack.listener(options, emit, partials=mode.partials, speculative=mode.speculative,
                                    endpoint=endpoint),
        tts, respond, output, barge_in=task == "echo",
        predict=bot.predict if mode.speculative else None)
    audio = np.concatenate([np.zeros(int(LEAD_S * 16000), np.float32), prompt.audio,
                            np.zeros(int(TAIL_S * 16000), np.float32)])
    last = int(LEAD_S * 16000) + last_speech_sample(prompt.audio)
    start = time.monotonic()
    for i in range(0, len(audio), FRAME):
        delay = start + (i + FRAME) / 16000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # a frame exists only once its 20 ms have been captured
        if i <= last - 1 < i + FRAME:
            first_after.clear()
            last_fed.append(time.monotonic())
        await conversation.feed(audio[i : i + FRAME])
    deadline = time.monotonic() + 5.0
    while not first_after and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(conversation.close(), timeout=30)
    latency = first_after[0] - last_fed[0] if first_after and last_fed else None
    return Turn(prompt.name, latency, " ".join(heard.values()), " ".join(said), lead[0] if lead else None)


def audible_from(audio: np.ndarray, level: float = 0.01) -> int:
    """Index of the first sample louder than ``level`` (the level a client calls sound), or the length."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return int(loud[0]) if loud.size else len(audio)


@contextlib.contextmanager
def phrase_caches(stack: VoiceStack, limit: int) -> Iterator[None]:
    """Each Piper voice of the stack with a fresh phrase cache of ``limit`` bytes (0: none) within the block.
    A latency bench speaks each text as if for the first time (a caller's own words are new; the same prompts
    in two modes must not hit the cache); a call flow's memory stage caches as the product does."""
    saved = {lang: voice.cache for lang, voice in stack.voices.items() if isinstance(voice, PiperVoice)}
    for lang in saved:
        stack.voices[lang].cache = PhraseCache(limit)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for lang, cache in saved.items():
            stack.voices[lang].cache = cache  # type: ignore[attr-defined]


def latency_stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * float(np.percentile(ordered, 95)), 1),
            "mean_ms": round(1000 * statistics.fmean(ordered), 1)}


async def latency_suite(stack: VoiceStack, prompts: list[Prompt], task: str,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in (STREAMING, NAIVE):
        turns = []
        for prompt in prompts:
            turns.append(await run_turn(stack, prompt, task, mode))
            if progress:
                progress(f"{task} {mode.name} {prompt.name}")
        latencies = [t.latency_s for t in turns if t.latency_s is not None]
        out[mode.name] = {**latency_stats(latencies), "missed": sum(t.latency_s is None for t in turns),
                          "turns": [asdict(t) for t in turns]}
        if task == "echo":
            out[mode.name]["wer"] = round(wer([p.text for p in prompts], [t.heard for t in turns]), 4)
    fast, naive = out["streaming"], out["naive"]
    if fast.get("p50_ms") and naive.get("p50_ms"):
        out["speedup_p50"] = round(naive["p50_ms"] / fast["p50_ms"], 2)
        out["speedup_p95"] = round(naive["p95_ms"] / fast["p95_ms"], 2)
    return out


async def translation_kept(stack: VoiceStack, prompts: list[Prompt], spoken: dict[str, str]) -> dict[str, Any]:
    """How much of a translation reaches the voice: chrF of what the interpreter handed to TTS against chrF of a
    plain text translation of the whole prompt (Whisper base, 30 s window, beam 5), both scored against the
    English prompt of the same name (Asterisk's prompts say the same words in every language)."""
    english = transcripts("en")
    scored = [p for p in prompts if p.name in english and p.name in spoken]
    if not scored:
        return {"n": 0}
    asr = stack.asr[stack.asr_model(prompts[0].language, "translate")]
    options = AsrOptions(language=prompts[0].language, task="translate", fast_window=False, beam_size=5)
    text = [(await asyncio.to_thread(asr.transcribe, p.audio, options)).text for p in scored]
    references = [english[p.name] for p in scored]
    spoken_chrf, text_chrf = chrf(references, [spoken[p.name] for p in scored]), chrf(references, text)
    return {"n": len(scored), "spoken_chrf": round(spoken_chrf, 1), "text_beam5_chrf": round(text_chrf, 1),
            "kept": round(spoken_chrf / text_chrf, 3) if text_chrf else None}


async def tts_suite(stack: VoiceStack, texts: list[str]) -> dict[str, Any]:
    tts = stack.tts("en")
    firsts, rtfs, round_trip_refs, round_trip_hyps = [], [], [], []
    asr = stack.asr[stack.asr_model("en", "transcribe")]
    for text in texts:
        start = time.perf_counter()
        stream = tts.stream(text)
        chunks: list[np.ndarray] = []
        async for chunk in stream:
            if not chunks:
                firsts.append(time.perf_counter() - start)
            chunks.append(chunk.audio)
        start = time.perf_counter()
        whole = await asyncio.to_thread(tts.synthesize, text)
        rtfs.append((time.perf_counter() - start) / (len(whole) / tts.out_rate))
        heard = await asyncio.to_thread(asr.transcribe, resample(whole, tts.out_rate, 16000), AsrOptions(language="en"))
        round_trip_refs.append(text)
        round_trip_hyps.append(heard.text)
    return {"first_audio": latency_stats(firsts), "rtf_mean": round(statistics.fmean(rtfs), 3),
            "rtf_max": round(max(rtfs), 3), "round_trip_wer": round(wer(round_trip_refs, round_trip_hyps), 4)}


async def run(stack: VoiceStack, limit: int, progress: Callable[[str], None] | None = None,
              peer: Callable[..., Awaitable[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The suites above; with ``peer`` (bench/peer.py's run, its options bound), the side-by-side run too."""
    en = load_prompts("en", limit)
    es = load_prompts("es", limit)
    warm = en[0].audio
    for model_id in stack.asr:  # load and warm every model before timing anything
        stack.asr[model_id].transcribe(warm, AsrOptions(language="en"))
    stack.voice("en").synthesize("Warming up.")
    with phrase_caches(stack, 0):
        results: dict[str, Any] = {
            "hangover_ms": stack.endpoint.hangover_ms,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": _cores(),
                        "python": platform.python_version()},
            "prompts": {"en": len(en), "es": len(es)},
            "echo_en": await latency_suite(stack, en, "echo", progress),
            "interpret_es_en": await latency_suite(stack, es, "interpret", progress),
            "tts": await tts_suite(stack, [p.text for p in en[:10]]),
        }
        spoken = {t["prompt"]: t["said"] for t in results["interpret_es_en"]["streaming"]["turns"]}
        results["interpret_es_en"]["translation_kept"] = await translation_kept(stack, es, spoken)
        if peer is not None:
            results["peer"] = await peer(stack, progress=progress or (lambda _: None))
    await stack.stop()
    return results


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
