"""A WebRTC client of the appliance (aiortc): plays audio as the microphone, records what comes back and the
data channel's events. `appliance bench api` measures latency with it; tests use it as the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from appliance.audio.frame import float_to_int16
from appliance.errors import ApplianceError
from appliance.webrtc.media import PacedTrack, listen_without_jitter_delay

RATE = 48000


class PcmSource(PacedTrack):
    """Plays float32 audio (at 48 kHz) in real time, then silence; notes when a given sample went out."""

    def __init__(self, audio: np.ndarray, mark_sample: int | None = None) -> None:
        super().__init__(RATE)
        self.pcm = float_to_int16(audio)
        self.mark_sample = mark_sample if mark_sample is not None else len(audio)
        self.marked_at: float | None = None  # time.monotonic() when the frame holding mark_sample was sent
        self.finished = asyncio.Event()
        self._played = 0

    def next_samples(self, n: int) -> np.ndarray:
        chunk = np.zeros(n, np.int16)
        part = self.pcm[self._played:self._played + n]
        chunk[:len(part)] = part
        if self.marked_at is None and self._played + n > self.mark_sample:
            self.marked_at = time.monotonic()
        self._played += n
        if self._played >= len(self.pcm):
            self.finished.set()
        return chunk


@dataclass
class CallResult:
    session: str
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (monotonic time, event)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival time, 48 kHz mono float32)
    marked_at: float | None = None

    def captions(self, final: bool = True) -> list[str]:
        """Caption texts in order; of finals, one per utterance (a rejoined turn's last is the whole of it)."""
        texts = [(e["utterance"], e["target"] or e["source"]) for _, e in self.events
                 if e.get("type") == "caption" and e.get("final") == final]
        return list(dict(texts).values()) if final else [text for _, text in texts]

    def first_sound_after(self, moment: float, level: float = 0.01) -> float | None:
        for arrived, samples in self.audio:
            if arrived >= moment and samples.size and float(np.abs(samples).max()) > level:
                return arrived
        return None

    def received(self) -> np.ndarray:
        return np.concatenate([a for _, a in self.audio]) if self.audio else np.zeros(0, np.float32)


async def call(base_url: str, token: str, spec: dict[str, Any], audio_48k: np.ndarray, mark_sample: int | None = None,
               tail_s: float = 3.0, timeout_s: float = 60.0) -> CallResult:
    """One session: offer, play ``audio_48k``, keep listening ``tail_s`` after it ends, hang up."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source = PcmSource(audio_48k, mark_sample)
    result = CallResult(session="")
    channel = pc.createDataChannel("events")
    channel.on("message", lambda m: result.events.append((time.monotonic(), json.loads(m))))
    tasks: list[asyncio.Task[None]] = []

    async def record(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    data = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
                    result.audio.append((time.monotonic(), (data / 32768.0).astype(np.float32)))

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(record(track))))
    pc.addTrack(source)
    for transceiver in pc.getTransceivers():  # play out as a browser does on a clean link, not 80 ms late
        listen_without_jitter_delay(transceiver.receiver)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
            reply = await http.post("/v1/webrtc/offer", json={**spec, "sdp": pc.localDescription.sdp,
                                                               "type": "offer"})
            if reply.status_code != 200:
                raise ApplianceError(f"offer refused ({reply.status_code}): {reply.text}")
            answer = reply.json()
            result.session = answer["session"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            await asyncio.wait_for(source.finished.wait(), timeout_s)
            await asyncio.sleep(tail_s)
            result.marked_at = source.marked_at
            await http.delete(f"/v1/webrtc/sessions/{result.session}")
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
    return result
