"""RTP (RFC 3550) packets, an adaptive jitter buffer with loss concealment, and RFC 4733 telephone events."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from appliance.errors import ApplianceError


class RtpError(ApplianceError):
    """A datagram that is not a usable RTP packet (dropped and counted, never raised to a call)."""


@dataclass
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def encode(self) -> bytes:
        return struct.pack("!BBHII", 0x80, (0x80 if self.marker else 0) | self.payload_type, self.sequence & 0xFFFF,
                           self.timestamp & 0xFFFFFFFF, self.ssrc) + self.payload

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < 12:
            raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
        first, second, sequence, timestamp, ssrc = struct.unpack("!BBHII", data[:12])
        if first >> 6 != 2:
            raise RtpError(f"RTP version {first >> 6}, not 2")
        offset = 12 + 4 * (first & 0x0F)
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise RtpError("truncated RTP header extension")
            offset += 4 + 4 * struct.unpack("!H", data[offset + 2:offset + 4])[0]
        end = len(data)
        if first & 0x20:  # padding: the last byte counts it
            if not data or data[-1] == 0 or data[-1] > end - offset:
                raise RtpError("bad RTP padding")
            end -= data[-1]
        if offset > end:
            raise RtpError("RTP header longer than the packet")
        return cls(second & 0x7F, sequence, timestamp, ssrc, data[offset:end], bool(second & 0x80))


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes after ``b`` (with wrap-around)."""
    return a != b and (a - b) & 0xFFFF < 0x8000


class JitterBuffer:
    """Reorders packets and releases one frame per tick. The target depth follows the RFC 3550 interarrival
    jitter estimate (between ``min_frames`` and ``max_frames``); a missing frame is concealed by repeating the
    last one, fading, then silence; packets older than what was played are dropped."""

    def __init__(self, frame_samples: int, clock: int, min_frames: int = 1, max_frames: int = 10) -> None:
        self.frame_samples, self.clock = frame_samples, clock
        self.min_frames, self.max_frames = min_frames, max_frames
        self._packets: dict[int, RtpPacket] = {}
        self._next: int | None = None
        self._last: int | None = None  # the last sequence number played (or concealed)
        self.jitter = 0.0  # in timestamp units, RFC 3550 §6.4.1
        self._transit: float | None = None
        self.started = False
        self.received = self.lost = self.late = 0

    @property
    def target(self) -> int:
        frames = int(np.ceil(max(0.0, 2 * self.jitter - 1) / self.frame_samples)) + self.min_frames
        return min(self.max_frames, max(self.min_frames, frames))

    def put(self, packet: RtpPacket, arrival_s: float) -> None:
        self.received += 1
        transit = arrival_s * self.clock - packet.timestamp
        if self._transit is not None:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
        self._transit = transit
        if self._last is not None and not seq_newer(packet.sequence, self._last):
            self.late += 1
            return
        if len(self._packets) >= 4 * self.max_frames:  # far behind: drop the oldest rather than grow
            self._packets.pop(min(self._packets, key=lambda s: (s - (self._next or s)) & 0xFFFF))
        self._packets[packet.sequence] = packet

    def pop(self) -> RtpPacket | None:
        """The next frame's packet, or None (a gap to conceal, or still filling)."""
        if not self.started:
            if len(self._packets) < self.target:
                return None
            self.started = True
            reference = (next(iter(self._packets)) - 0x4000) & 0xFFFF  # well before any packet held
            self._next = min(self._packets, key=lambda s: (s - reference) & 0xFFFF)
        assert self._next is not None
        packet = self._packets.pop(self._next, None)
        self._last, self._next = self._next, (self._next + 1) & 0xFFFF
        if packet is None:
            if not self._packets:  # ran dry: refill to the target before playing again
                self.started = False
                self._next = None
            else:
                self.lost += 1
        return packet


class Concealer:
    """Fills a lost frame: the last good frame again at decreasing level, then silence (G.711 Appendix I style,
    simplified)."""

    def __init__(self) -> None:
        self._last: np.ndarray | None = None
        self._misses = 0

    def good(self, frame: np.ndarray) -> np.ndarray:
        self._last, self._misses = frame, 0
        return frame

    def missing(self, samples: int) -> np.ndarray:
        self._misses += 1
        if self._last is None or self._misses > 3 or len(self._last) != samples:
            return np.zeros(samples, np.int16)
        return (self._last.astype(np.float32) * (0.6 ** self._misses)).astype(np.int16)


@dataclass(frozen=True)
class DtmfEvent:
    """RFC 4733 §2.3: event 0-9, 10 '*', 11 '#', 12-15 'A'-'D'."""

    event: int
    end: bool
    volume: int
    duration: int

    DIGITS = "0123456789*#ABCD"

    @property
    def digit(self) -> str:
        return self.DIGITS[self.event] if self.event < 16 else "?"

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration)

    @classmethod
    def parse(cls, payload: bytes) -> DtmfEvent:
        if len(payload) < 4:
            raise RtpError("telephone-event payload shorter than 4 bytes")
        event, flags, duration = struct.unpack("!BBH", payload[:4])
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    @classmethod
    def for_digit(cls, digit: str, end: bool, duration: int, volume: int = 10) -> DtmfEvent:
        if digit.upper() not in cls.DIGITS:
            raise RtpError(f"not a DTMF digit: {digit!r}")
        return cls(cls.DIGITS.index(digit.upper()), end, volume, duration)
