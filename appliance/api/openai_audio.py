"""OpenAI-compatible audio API: transcriptions, translations, speech (streamed), models.

Clients such as the `openai` SDK work unchanged with ``base_url`` pointed here. Model names are
accepted as given ("whisper-1", "tts-1" or a catalog id); the device serves what it has.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from appliance.api.auth import require_key
from appliance.api.context import services_of
from appliance.api.formats import FORMATS, Segment, render
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body
from appliance.audio import ASR_RATE, AudioError, read_audio
from appliance.errors import ApplianceError
from appliance.voice.asr import AsrOptions
from appliance.voice.offline import segments
from appliance.voice.stack import VoiceStack

router = APIRouter(prefix="/v1", tags=["openai"])
PCM_RATE = 24000  # the OpenAI API's "pcm": 24 kHz, 16-bit, mono, little-endian


def _bad(message: str, code: str = "invalid_request") -> HTTPException:
    return HTTPException(400, error_body(message, "invalid_request_error", code))


async def _audio_request(request: Request, file: UploadFile, task: str, language: str | None, prompt: str | None,
                         response_format: str) -> Any:
    services = services_of(request)
    if response_format not in FORMATS:
        raise _bad(f"response_format {response_format!r} is not supported; use one of {', '.join(FORMATS)}")
    stack = services.ready_stack()
    data = await file.read()

    def work() -> tuple[str, float, list[Segment]]:
        audio = read_audio(data, ASR_RATE, max_seconds=services.settings.max_audio_s)
        options = AsrOptions(language=language, task=task, prompt=prompt)  # type: ignore[arg-type]
        asr = stack.asr[stack.asr_model(language, task)]
        found, detected = [], language or "en"
        for seg in segments(audio.samples, stack.new_vad()):
            result = asr.transcribe(seg.audio, options)
            detected = result.language
            if result.text:
                found.append(Segment(seg.start, seg.end, result.text))
        return detected, audio.duration, found

    try:
        detected, duration, found = await asyncio.to_thread(work)
    except AudioError as exc:
        raise _bad(f"file {file.filename or ''!s}: {exc}", "invalid_audio") from None
    except ApplianceError as exc:
        raise _bad(str(exc)) from None
    services.audio_seconds.labels(task).inc(duration)
    body, media = render(response_format, task, detected, duration, found)
    if isinstance(body, dict):
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=media)


@router.post("/audio/transcriptions")
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File(description="Audio in any format soundfile reads (WAV, FLAC, OGG, …).")],
    model: Annotated[str, Form()] = "whisper-1",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    key: ApiKey = Depends(require_key),
) -> Any:
    """Speech to text in the spoken language."""
    return await _audio_request(request, file, "transcribe", language, prompt, response_format)


@router.post("/audio/translations")
async def translations(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    key: ApiKey = Depends(require_key),
) -> Any:
    """Speech in any language to English text."""
    return await _audio_request(request, file, "translate", None, prompt, response_format)


class SpeechRequest(BaseModel):
    model: str = "tts-1"
    input: str = Field(min_length=1, max_length=4096)
    voice: str = "default"
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    language: str = "en"


@router.post("/audio/speech")
async def speech(request: Request, body: SpeechRequest, key: ApiKey = Depends(require_key)) -> StreamingResponse:
    """Text to speech, streamed phrase by phrase as it is synthesised."""
    stack: VoiceStack = services_of(request).ready_stack()
    try:
        voice = stack.voice(body.language)
    except ApplianceError as exc:
        raise _bad(str(exc), "unsupported_language") from None
    rate = PCM_RATE if body.response_format == "pcm" else voice.sample_rate
    tts = stack.tts(body.language, out_rate=rate)

    async def audio() -> AsyncIterator[bytes]:
        if body.response_format == "wav":
            yield _streaming_wav_header(rate)
        stream = tts.stream(body.input)
        try:
            async for chunk in stream:
                yield (np.clip(chunk.audio, -1, 1) * 32767).astype("<i2").tobytes()
        finally:
            await stream.aclose()

    media = "audio/wav" if body.response_format == "wav" else "audio/pcm"
    return StreamingResponse(audio(), media_type=media, headers={"X-Voice": voice.label})


@router.get("/models")
async def models(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    ids = ["whisper-1", "tts-1", *services_of(request).provisioned()]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "appliance"}
                                       for i in ids]}


def _streaming_wav_header(rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes at their maximum, as streaming encoders write)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", unknown - 36)
