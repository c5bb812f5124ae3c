"""`appliance bench voice --peer pipecat`: the English echo bot of this appliance, through its public realtime
WebSocket (`/v1/stream`, mode echo), side by side with Pipecat's (`peers/pipecat_echo.py`, run by Pipecat's own
venv that `make bench-peers` builds) on the same models, prompts, clock and end-of-speech rule, one after the
other on this machine; and the accuracy of the appliance's streaming finals against a 30 s-window decode of the
same prompts.

Prompts: ``count`` spread evenly (alphabetical order) over the Asterisk English prompts of 1.5 to 4 s with
transcripts. Each is fed at real time in 20 ms frames, 0.5 s of silence before and 2 s after. Latency = first
answer audio minus the moment the frame holding the prompt's last sample within 40 dB of its loudest 10 ms window
was fed (the same frame index for both); the appliance's answer is the one after the last barge-in (`flush`)
before that moment, and may begin before it (a negative latency).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer
from appliance.bench.corpus import Prompt, last_speech_sample, load_prompts
from appliance.bench.text import wer
from appliance.bench.voice import FRAME, LEAD_S, TAIL_S, latency_stats
from appliance.config.settings import ApiSettings
from appliance.errors import ApplianceError
from appliance.voice.asr import AsrOptions
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack

PEERS = Path(__file__).parent / "peers"
PIPECAT_PYTHON = Path(".venv-pipecat/bin/python")  # made by `make bench-peers`
FLOOR_DB = -40.0
MIN_S, MAX_S = 1.5, 4.0
ANSWER_WAIT_S = 5.0  # after the tail, how long an answer may still come (as in the peer)
GOALS = {"p50_ms": 300.0, "p95_ms": 450.0, "speedup_p50": 3.0, "speedup_p95": 2.0}
Progress = Callable[[str], None]


@dataclass
class PeerTurn:
    prompt: str
    latency_s: float | None
    heard: str


def spread_prompts(count: int) -> list[Prompt]:
    """``count`` prompts evenly spaced over all English prompts of MIN_S to MAX_S with transcripts."""
    every = load_prompts("en", 100_000, MIN_S, MAX_S)
    if len(every) <= count:
        return every
    return [every[round(i * (len(every) - 1) / max(1, count - 1))] for i in range(count)]


def framed(prompt: Prompt) -> tuple[np.ndarray, int]:
    """The prompt with its lead and tail silence, and the index of the 20 ms frame holding its last speech."""
    lead = int(LEAD_S * 16000)
    audio = np.concatenate([np.zeros(lead, np.float32), prompt.audio, np.zeros(int(TAIL_S * 16000), np.float32)])
    last = lead + last_speech_sample(prompt.audio, floor_db=FLOOR_DB)
    return audio, (last - 1) // FRAME


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def websocket_turn(url: str, token: str, prompt: Prompt) -> PeerTurn:
    """One prompt through `/v1/stream` (a socket of its own, as a new caller), fed at real time."""
    from websockets.asyncio.client import connect

    audio, last_frame = framed(prompt)
    marked: list[float] = []
    answers: list[float] = []  # arrival of each answer chunk
    flushes: list[float] = []  # barge-ins: what came before is not the answer heard
    finals: dict[int, str] = {}
    done = asyncio.Event()
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "mode": "echo", "language": "en", "sample_rate": 16000,
                                  "output_rate": 16000}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if ready.get("type") != "ready":
            raise ApplianceError(f"the realtime WebSocket refused the stream: {ready}")

        async def receive() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                if event["type"] == "audio":
                    answers.append(time.monotonic())
                elif event["type"] == "flush":
                    flushes.append(time.monotonic())
                elif event["type"] == "caption" and event.get("final"):
                    finals[event["utterance"]] = event["source"]
                elif event["type"] == "done":
                    done.set()
                    return

        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        for index in range(len(audio) // FRAME):
            delay = start + (index + 1) * FRAME / 16000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # a frame exists only once its 20 ms have been captured
            if index == last_frame:
                marked.append(time.monotonic())
            await ws.send(pcm16(audio[index * FRAME:(index + 1) * FRAME]))
        deadline = time.monotonic() + ANSWER_WAIT_S
        while not (marked and answers and answers[-1] >= marked[0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await ws.send(json.dumps({"type": "stop"}))
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            receiver.cancel()
    return PeerTurn(prompt.name, answer_latency(answers, flushes, marked[0] if marked else None),
                    " ".join(finals[k] for k in sorted(finals)))


def answer_latency(answers: list[float], flushes: list[float], marked: float | None) -> float | None:
    """From the mark to the start of the answer heard: its first chunk after the last barge-in before the mark
    (an answer to the first words of a turn, cut short when the speaker went on, is not it). An answer that
    began while the prompt's last quiet sounds were still coming has a negative latency."""
    if marked is None:
        return None
    cut = max((at for at in flushes if at <= marked), default=float("-inf"))
    heard = [at for at in answers if at > cut]
    return heard[0] - marked if heard else None


async def websocket_suite(stack: VoiceStack, prompts: list[Prompt], progress: Progress) -> list[PeerTurn]:
    with tempfile.TemporaryDirectory() as tmp:
        keys = KeyStore(Path(tmp) / "keys.json")
        _, token = keys.create("bench")
        services = ApiServices(ApiSettings(rate_per_minute=1_000_000), keys, VoiceModels.of(stack), list)
        turns = []
        with ThreadedServer(services) as server:
            for prompt in prompts:
                turns.append(await websocket_turn(server.url, token, prompt))
                progress(f"websocket {prompt.name}")
    return turns


def require_peer(python: Path) -> None:
    """Before any model loads: the peer's venv is there."""
    if not python.exists():
        raise ApplianceError(f"Pipecat's venv is missing ({python}); fix: make bench-peers")


def pipecat_suite(python: Path, whisper: Path, piper: Path, prompts: list[Prompt], progress: Progress
                  ) -> list[PeerTurn]:
    """The same turns through Pipecat's echo bot, in its own venv's Python (``require_peer`` checked it)."""
    with tempfile.TemporaryDirectory() as tmp:
        turns = []
        for prompt in prompts:
            audio, last_frame = framed(prompt)
            pcm = Path(tmp) / f"{prompt.name}.pcm"
            pcm.write_bytes(pcm16(audio))
            turns.append({"name": prompt.name, "pcm": str(pcm), "last_frame": last_frame})
        (Path(tmp) / "turns.json").write_text(json.dumps(turns))
        out = Path(tmp) / "out.json"
        limit_s = 120 + len(prompts) * (LEAD_S + MAX_S + TAIL_S + 2 * ANSWER_WAIT_S + 1)
        try:
            proc = subprocess.run([str(python), str(PEERS / "pipecat_echo.py"), "--whisper", str(whisper),
                                   "--piper", str(piper), "--turns", str(Path(tmp) / "turns.json"), "--out", str(out)],
                                  capture_output=True, text=True, timeout=limit_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ApplianceError(f"Pipecat's echo bot did not finish {len(prompts)} turns in {limit_s:.0f} s") from None
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ApplianceError(f"Pipecat's echo bot failed (exit {proc.returncode}):\n{tail}")
        results = json.loads(out.read_text())
    progress(f"pipecat {len(results)} turns")
    return [PeerTurn(r["name"], r["latency_s"], r["heard"]) for r in results]


def offline_wer(stack: VoiceStack, prompts: list[Prompt]) -> float:
    """WER of one decode of each whole prompt with Whisper's 30 s window (what the streaming finals must match)."""
    asr = stack.asr[stack.asr_model("en", "transcribe")]
    options = AsrOptions(language="en", fast_window=False)
    return wer([p.text for p in prompts], [asr.transcribe(p.audio, options).text for p in prompts])


def summary(turns: list[PeerTurn], prompts: list[Prompt]) -> dict[str, Any]:
    latencies = [t.latency_s for t in turns if t.latency_s is not None]
    return {**latency_stats(latencies), "missed": len(turns) - len(latencies),
            "wer": round(wer([p.text for p in prompts], [t.heard for t in turns]), 4),
            "turns": [asdict(t) for t in turns]}


def compare(ours: dict[str, Any], peer: dict[str, Any], offline: float) -> dict[str, Any]:
    """Ratios (peer ÷ ours: how many times faster) and each goal of the voice loop's second pass, met or not."""
    ratios = {}
    if ours.get("p50_ms") and peer.get("p50_ms"):
        ratios = {"speedup_p50": round(peer["p50_ms"] / ours["p50_ms"], 2),
                  "speedup_p95": round(peer["p95_ms"] / ours["p95_ms"], 2)}
    goals = {
        "p50_ms": ours.get("p50_ms", float("inf")) <= GOALS["p50_ms"],
        "p95_ms": ours.get("p95_ms", float("inf")) <= GOALS["p95_ms"],
        "wer_vs_peer": ours["wer"] <= peer["wer"],
        "wer_vs_30s_window": ours["wer"] <= offline,
        "speedup_p50": ratios.get("speedup_p50", 0.0) >= GOALS["speedup_p50"],
        "speedup_p95": ratios.get("speedup_p95", 0.0) >= GOALS["speedup_p95"],
        "no_missed_turns": ours["missed"] == 0,
    }
    return {**ratios, "goals": goals}


async def run(stack: VoiceStack, count: int, python: Path, whisper: Path, piper: Path,
              progress: Progress) -> dict[str, Any]:
    prompts = spread_prompts(count)
    ours = summary(await websocket_suite(stack, prompts, progress), prompts)
    peer = summary(await asyncio.to_thread(pipecat_suite, python, whisper, piper, prompts, progress), prompts)
    offline = round(await asyncio.to_thread(offline_wer, stack, prompts), 4)
    return {"peer": "pipecat", "prompts": [p.name for p in prompts], "floor_db": FLOOR_DB,
            "appliance_websocket": ours, "pipecat": peer, "wer_30s_window": offline,
            **compare(ours, peer, offline)}
