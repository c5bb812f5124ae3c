"""Realtime WebSocket: stream PCM in, get transcripts, captions and synthesised speech back.

Protocol (documented in docs/realtime.md): the client sends one JSON ``start`` message, then binary
frames of 16-bit little-endian mono PCM at its sample rate; the server answers with JSON events and binary
frames of synthesised PCM at the requested output rate. Garbage gets an ``error`` event, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import Field, ValidationError

from appliance.api.auth import AuthError, authenticate
from appliance.api.context import services_of
from appliance.audio import ASR_RATE, AudioFrame, StreamResampler
from appliance.errors import ApplianceError
from appliance.sessions import SessionSpec, event_json, open_conversation
from appliance.voice.conversation import Conversation, OutEvent, Speech
from appliance.voice.readiness import ModelsNotReady
from appliance.voice.stack import VoiceStack

router = APIRouter()
MAX_FRAME_BYTES = 64_000


class Start(SessionSpec):
    type: Literal["start"]
    sample_rate: int = Field(16000, ge=8000, le=48000)  # of the PCM the client sends
    output_rate: int = Field(16000, ge=8000, le=48000)  # of the PCM the server sends back


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    services = services_of(ws)
    try:
        authenticate(ws, query=True)  # as every route: Bearer or the kiosk's cookie (or ?access_token=), rate limit
    except AuthError as exc:
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await ws.accept()
    try:
        stack = services.models.require()
    except ModelsNotReady as exc:
        await _send(ws, {"type": "error", "message": str(exc), "retry_after": exc.retry_after_s})
        await ws.close(code=1013 if exc.retry_after_s else 1011)
        return
    session = _Session(ws, stack)
    services.sessions.inc()
    try:
        await session.run()
    except WebSocketDisconnect:
        pass
    finally:
        await session.close()
        services.sessions.dec()


class _Session:
    def __init__(self, ws: WebSocket, stack: VoiceStack) -> None:
        self.ws = ws
        self.stack = stack
        self.conversation: Conversation | None = None
        self.resampler: StreamResampler | None = None
        self.start: Start | None = None
        self.position = 0

    async def run(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await self._control(message["text"])
            elif message.get("bytes") is not None:
                await self._audio(message["bytes"])

    async def _control(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            await self._error("not JSON; send {\"type\": \"start\", ...} then binary PCM frames")
            return
        if isinstance(data, dict) and data.get("type") == "stop":
            await self._finish()
            return
        if self.start is not None:
            await self._error("already started; send binary PCM frames, or {\"type\": \"stop\"}")
            return
        try:
            self.start = Start.model_validate(data)
            self.conversation = open_conversation(self.stack, self.start, self._out, self.start.output_rate)
        except ValidationError as exc:
            self.start = None
            await self._error("bad start message: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            return
        except ApplianceError as exc:
            self.start = None
            await self._error(str(exc))
            return
        self.resampler = StreamResampler(self.start.sample_rate, ASR_RATE, quality="QQ")
        await _send(self.ws, {"type": "ready", "mode": self.start.mode, "output_rate": self.start.output_rate})

    async def _audio(self, data: bytes) -> None:
        if self.conversation is None or self.resampler is None or self.start is None:
            await self._error("send a start message before audio")
            return
        if len(data) % 2 or len(data) > MAX_FRAME_BYTES:
            await self._error(f"audio frames are 16-bit PCM of at most {MAX_FRAME_BYTES} bytes; got {len(data)}")
            return
        frame = AudioFrame.from_bytes(data, self.start.sample_rate, timestamp=self.position / self.start.sample_rate)
        self.position += len(data) // 2
        out = self.resampler.process(frame)
        if out is not None:
            await self.conversation.feed(out.to_float32())

    async def _out(self, event: OutEvent) -> None:
        await _send(self.ws, event_json(event))
        if isinstance(event, Speech):
            await self.ws.send_bytes((np.clip(event.chunk.audio, -1, 1) * 32767).astype("<i2").tobytes())

    async def _error(self, message: str) -> None:
        await _send(self.ws, {"type": "error", "message": message})

    async def _finish(self) -> None:
        if self.conversation is not None:
            if self.resampler is not None and (tail := self.resampler.flush()) is not None:
                await self.conversation.feed(tail.to_float32())
            await self.conversation.feed(np.zeros(ASR_RATE, np.float32))  # let the endpointer close the turn
            await self.conversation.close(drain=True)
            self.conversation = None
        await _send(self.ws, {"type": "done"})

    async def close(self) -> None:
        if self.conversation is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conversation.close(), timeout=5)
            self.conversation = None


async def _send(ws: WebSocket, event: dict[str, Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(json.dumps(event, ensure_ascii=False))
