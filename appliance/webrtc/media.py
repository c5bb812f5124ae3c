"""Media between aiortc and the voice core: incoming av frames to 16 kHz mono, speech to a paced outgoing track."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from appliance.audio import ASR_RATE, AudioFrame, StreamResampler
from appliance.audio.queue import PcmQueue

OUT_RATE = 48000  # Opus' clock; synthesised speech is produced at this rate, so nothing resamples on the way out
PTIME_S = 0.02


class InboundAudio:
    """Turns whatever the peer sends (Opus decodes to 48 kHz stereo s16; PCMU to 8 kHz mono) into 16 kHz mono."""

    def __init__(self) -> None:
        self._resampler: StreamResampler | None = None
        self.position = 0.0

    def convert(self, frame: av.AudioFrame) -> np.ndarray | None:
        channels = len(frame.layout.channels)
        data = frame.to_ndarray()
        if frame.format.is_planar:
            samples = data.astype(np.float32).mean(axis=0)
        else:
            samples = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
        if np.issubdtype(data.dtype, np.integer):
            samples /= 32768.0
        rate = int(frame.sample_rate)
        if self._resampler is None or self._resampler.from_rate != rate:
            self._resampler = StreamResampler(rate, ASR_RATE, quality="QQ") if rate != ASR_RATE else None
        pcm = AudioFrame.from_float32(samples, rate, timestamp=self.position)
        self.position += len(samples) / rate
        out = self._resampler.process(pcm) if self._resampler is not None else pcm
        return out.to_float32() if out is not None else None


class PacedTrack(MediaStreamTrack):
    """An outgoing audio track at ``rate``, one 20 ms frame per 20 ms of wall time, mono s16 sent as two equal
    channels (`stereo_frame`); subclasses say what the next frame holds."""

    kind = "audio"

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self.frame_samples = int(rate * PTIME_S)
        self._start: float | None = None
        self._pts = 0

    def next_samples(self, n: int) -> np.ndarray:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._pts / self.rate - time.monotonic()))
        frame = stereo_frame(self.next_samples(self.frame_samples))
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self._pts, fractions.Fraction(1, self.rate)
        self._pts += self.frame_samples
        return frame


def stereo_frame(mono: np.ndarray) -> av.AudioFrame:
    """A packed s16 stereo frame with the mono samples in both channels. aiortc's Opus encoder takes stereo and
    upmixes a mono frame through FFmpeg's resampler, which puts a centre channel at -3 dB: every mono frame lost
    3 dB on the way (a quieter voice for the browser, and Whisper fed a signal 3 dB below the one sent, enough
    to flip a translation). Stereo passes untouched, and PCMU/G.722 mix it back to mono at unity gain."""
    return av.AudioFrame.from_ndarray(np.repeat(mono.astype(np.int16, copy=False), 2).reshape(1, -1), format="s16",
                                      layout="stereo")


class SpeechTrack(PacedTrack):
    """Synthesised speech when some is queued, silence otherwise. ``queue.flush()`` drops it (barge-in)."""

    def __init__(self) -> None:
        super().__init__(OUT_RATE)
        self.queue = PcmQueue()

    def next_samples(self, n: int) -> np.ndarray:
        return self.queue.take(n)


JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"  # aiortc (pinned) has no public setting for it


class ArrivalBuffer(JitterBuffer):
    """Each audio packet to the decoder as it arrives, for speech recognition (nothing is played out). aiortc's
    buffer learns that a frame is complete only from the next packet, 20 ms later (plus its prefetch of four
    frames); but an audio RTP packet is always one whole frame. A packet older than one already passed on (late
    after reordering, or a duplicate) is dropped: 20 ms missing, where waiting for it would delay every packet."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None and not 0 < uint16_add(seq, -self._last) < 0x8000:
            return False, None
        self._last = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def listen_on_arrival(receiver: Any) -> None:
    """The appliance's receiver: packets to the speech recogniser as they arrive (`ArrivalBuffer`) instead of
    80 ms later. Replaces aiortc's private buffer when it is there; does nothing otherwise."""
    if isinstance(getattr(receiver, JITTER_BUFFER, None), JitterBuffer):
        setattr(receiver, JITTER_BUFFER, ArrivalBuffer())


def listen_without_jitter_delay(receiver: Any) -> None:
    """A measuring client that plays out as a browser does on a clean link: aiortc's audio jitter buffer holds
    four 20 ms frames (80 ms) before releasing one; one is enough. Replaces aiortc's private buffer when it is
    there; does nothing otherwise."""
    if isinstance(getattr(receiver, JITTER_BUFFER, None), JitterBuffer):
        setattr(receiver, JITTER_BUFFER, JitterBuffer(capacity=16, prefetch=1))
