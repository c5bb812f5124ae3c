"""`appliance bench api`: the HTTP API and WebRTC as clients see them, on loopback.

- Transcription throughput: the Asterisk prompts POSTed to /v1/audio/transcriptions by 1, 4 and 8 concurrent
  clients; requests per second and latency, as ratios against one client.
- WebRTC voice-to-voice latency through aiortc: the echo bot's first sound at the client after the prompt's
  last speech sample left it, against the same turns fed straight into the voice core (no transport), timed to
  the first audible sample of the first synthesised chunk. The client plays out as a browser does on a clean
  link (its jitter buffer holds one frame, not aiortc's four).
Client and server share this process (and its two cores); the figures include that contention.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer
from appliance.audio import resample, wav_bytes
from appliance.bench.corpus import Prompt, last_speech_sample, load_prompts
from appliance.bench.voice import STREAMING, latency_stats, phrase_caches, run_turn
from appliance.config.settings import ApiSettings
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from appliance.webrtc.client import RATE, call

Progress = Callable[[str], None]


async def transcription_load(url: str, token: str, prompts: list[Prompt], clients: int, requests: int,
                             progress: Progress) -> dict[str, Any]:
    bodies = [wav_bytes(p.audio, 16000) for p in prompts]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    failures: list[str] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            while not queue.empty():
                i = queue.get_nowait()
                start = time.perf_counter()
                reply = await http.post("/v1/audio/transcriptions", data={"model": "whisper-1", "language": "en"},
                                        files={"file": (f"{i}.wav", bodies[i % len(bodies)], "audio/wav")})
                if reply.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures.append(f"{reply.status_code} {reply.text[:100]}")
                progress(f"transcriptions, {clients} clients")

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    audio_s = sum(len(prompts[i % len(prompts)].audio) for i in range(requests)) / 16000
    return {"clients": clients, "requests": requests, "failed": len(failures), "errors": failures[:3],
            "req_per_s": round(len(latencies) / wall, 2), "audio_s_per_s": round(audio_s / wall, 1),
            **latency_stats(latencies)}


async def webrtc_latency(url: str, token: str, prompts: list[Prompt], progress: Progress) -> dict[str, Any]:
    latencies: list[float] = []
    turns: dict[str, float | None] = {}
    missed = 0
    for prompt in prompts:
        lead = np.zeros(RATE // 2, np.float32)
        audio = np.concatenate([lead, resample(prompt.audio, 16000, RATE)])
        mark = len(lead) + last_speech_sample(prompt.audio) * RATE // 16000
        result = await call(url, token, {"mode": "echo", "language": "en"}, audio, mark_sample=mark, tail_s=3)
        first = result.first_sound_after(result.marked_at) if result.marked_at is not None else None
        if first is None or result.marked_at is None:
            missed += 1
            turns[prompt.name] = None
        else:
            latencies.append(first - result.marked_at)
            turns[prompt.name] = round(1000 * latencies[-1], 1)
        progress(f"webrtc {prompt.name}")
    return {**latency_stats(latencies), "missed": missed, "turns_ms": turns}


async def direct_latency(stack: VoiceStack, prompts: list[Prompt], progress: Progress) -> dict[str, Any]:
    latencies = []
    turns: dict[str, float | None] = {}
    for prompt in prompts:
        turn = await run_turn(stack, prompt, "echo", STREAMING)
        # to the first audible sample of the first chunk: what the WebRTC client calls its first sound
        latency = turn.latency_s + (turn.sound_lead_s or 0.0) if turn.latency_s is not None else None
        if latency is not None:
            latencies.append(latency)
        turns[prompt.name] = round(1000 * latency, 1) if latency is not None else None
        progress(f"direct {prompt.name}")
    return {**latency_stats(latencies), "missed": len(prompts) - len(latencies), "turns_ms": turns}


def run(stack: VoiceStack, limit: int, requests: int, progress: Progress) -> dict[str, Any]:
    prompts = load_prompts("en", limit)
    with tempfile.TemporaryDirectory() as tmp, phrase_caches(stack, 0):  # WebRTC and direct echo the same words
        keys = KeyStore(Path(tmp) / "keys.json")
        _, token = keys.create("bench")
        settings = ApiSettings(rate_per_minute=1_000_000, max_sessions=4)
        services = ApiServices(settings, keys, VoiceModels.of(stack), list)
        with ThreadedServer(services) as server:
            load = [asyncio.run(transcription_load(server.url, token, prompts, c, requests, progress))
                    for c in (1, 4, 8)]
            rtc = asyncio.run(webrtc_latency(server.url, token, prompts, progress))
        direct = asyncio.run(direct_latency(stack, prompts, progress))
    base = load[0]["req_per_s"] or 1
    for level in load:
        level["throughput_vs_1_client"] = round(level["req_per_s"] / base, 2)
    out: dict[str, Any] = {"prompts": len(prompts), "transcriptions": load,
                           "webrtc_echo": rtc, "direct_echo": direct}
    if rtc.get("p50_ms") and direct.get("p50_ms"):
        out["webrtc_overhead_p50_ms"] = round(rtc["p50_ms"] - direct["p50_ms"], 1)
        out["webrtc_vs_direct_p50"] = round(rtc["p50_ms"] / direct["p50_ms"], 2)
        out["webrtc_vs_direct_p95"] = round(rtc["p95_ms"] / direct["p95_ms"], 2)
    return out
