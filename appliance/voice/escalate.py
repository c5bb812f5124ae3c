"""ASR escalation: a final transcript the device is unsure of goes to the upstream tier's Whisper.

The confidence of a final is Whisper's mean token probability, exp(avg_logprob). The device's `asr` routes
(`when = "low-confidence"` with its `min_confidence`) decide whether it goes up at all; each route's endpoint is
asked through its circuit breaker (OpenAI's /audio/transcriptions, or /audio/translations for a translate
task) within the task's budget. An answer in time replaces the local text (the result says where it came
from); otherwise the local transcript stands, late only by the budget at most.
"""

from __future__ import annotations

import dataclasses
import math

import httpx
import numpy as np

from appliance.audio import ASR_RATE
from appliance.audio.files import wav_bytes
from appliance.runtime.routes import Route, Routes
from appliance.voice.asr import AsrOptions, AsrResult


class AsrEscalation:
    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    async def __call__(self, audio: np.ndarray, result: AsrResult, options: AsrOptions) -> AsrResult:
        plan = self.routes.plan("asr", local=True, confidence=math.exp(result.avg_logprob))
        if not plan:
            return result
        wav = wav_bytes(audio, ASR_RATE)
        for attempt in self.routes.attempts("asr", plan):
            try:
                text = await _ask(attempt.route, wav, options, attempt.timeout_s)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                attempt.failed("timeout" if isinstance(exc, httpx.TimeoutException) else "unavailable")
                continue
            attempt.ok()
            if text:
                return dataclasses.replace(result, text=text, words=tuple(text.split()),
                                           source=f"upstream:{attempt.route.endpoint.name}")
        self.routes.fell_back("asr", "unavailable")
        return result


async def _ask(route: Route, wav: bytes, options: AsrOptions, timeout_s: float) -> str:
    endpoint = route.endpoint
    kind = "translations" if options.task == "translate" else "transcriptions"
    data = {"model": endpoint.model if endpoint.model != "default" else "whisper-1"}
    if options.language and kind == "transcriptions":
        data["language"] = options.language
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        reply = await client.post(f"{endpoint.base_url.rstrip('/')}/audio/{kind}", headers=headers, data=data,
                                  files={"file": ("turn.wav", wav, "audio/wav")})
        reply.raise_for_status()
        return str(reply.json()["text"]).strip()
