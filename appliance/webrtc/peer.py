"""One WebRTC session per browser or client: HTTP offer → answer, mic track → voice core → speech track,
and a data channel (opened by the client) carrying the same JSON events as the realtime WebSocket.

ICE uses host candidates only (no STUN: the device is offline by default). A peer that closes, fails ICE
or ends its track frees its session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from appliance.errors import ApplianceError
from appliance.sessions import EventRelay, SessionSpec, open_conversation
from appliance.voice.stack import VoiceStack
from appliance.webrtc.media import OUT_RATE, InboundAudio, SpeechTrack, listen_on_arrival

MAX_SDP_BYTES = 64_000
log = logging.getLogger(__name__)


class SdpError(ApplianceError):
    """The offer cannot be answered; the message says why."""


class WebRtcSession:
    def __init__(self, stack: VoiceStack, spec: SessionSpec, on_closed: Callable[[WebRtcSession], None]) -> None:
        self.id = secrets.token_urlsafe(9)
        self.spec = spec
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.speech = SpeechTrack()
        self.relay = EventRelay(spec.mode, self.speech.queue, self._send)
        self.conversation = open_conversation(stack, spec, self.relay, OUT_RATE)
        self.channel: RTCDataChannel | None = None
        self._pending: deque[str] = deque(maxlen=200)
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_closed = on_closed
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        if kind != "offer":
            raise SdpError(f"expected an SDP offer, got type '{kind}'")
        if not sdp.strip() or len(sdp) > MAX_SDP_BYTES:
            raise SdpError(f"the SDP offer is empty or longer than {MAX_SDP_BYTES} bytes")
        if not sdp.lstrip().startswith("v=0"):
            raise SdpError("invalid SDP offer: an SDP body starts with 'v=0' (RFC 4566)")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError… on a malformed offer
            raise SdpError(f"invalid SDP offer: {exc or type(exc).__name__}") from None
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise SdpError("the SDP offer has no audio media section; offer the microphone (audio, sendrecv)")
        for transceiver in audio:
            listen_on_arrival(transceiver.receiver)
        self.pc.addTrack(self.speech)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._pump(track))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("open", self._send_pending)
        channel.on("message", self._on_message)
        self._send_pending()

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close(f"connection {self.pc.connectionState}"))

    async def _pump(self, track: MediaStreamTrack) -> None:
        inbound = InboundAudio()
        try:
            while True:
                frame = await track.recv()
                samples = inbound.convert(frame) if isinstance(frame, av.AudioFrame) else None
                if samples is not None:
                    await self.conversation.feed(samples)
        except MediaStreamError:  # the peer ended its track or went away
            asyncio.get_running_loop().create_task(self.close("the peer's audio track ended"))

    def _on_message(self, message: object) -> None:
        try:
            data = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("type") == "ping":
            self._send({"type": "pong", "state": self.relay.states.state})
        else:
            self._send({"type": "error", "message": "unknown message; the data channel accepts {\"type\": \"ping\"}"})

    def _send(self, event: dict[str, Any]) -> None:
        self._pending.append(json.dumps(event, ensure_ascii=False))
        self._send_pending()

    def _send_pending(self) -> None:
        channel = self.channel
        while channel is not None and channel.readyState == "open" and self._pending:
            channel.send(self._pending.popleft())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, reason: str = "hung up") -> None:
        if self._closed:
            return
        self._closed = True
        log.info("webrtc session %s closed: %s", self.id, reason)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conversation.close(), timeout=5)
        await self.relay.close()
        self.speech.stop()
        await self.pc.close()
        self._on_closed(self)
