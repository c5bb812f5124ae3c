"""RTCP (RFC 3550 §6): sender and receiver reports, source descriptions and BYE, as dataclasses that parse from
and encode to their wire format, and compound packets of them (other packet types, APP, feedback, XR, are
skipped when parsing). ``ReceptionStats`` and ``Reporter`` do a session's RTCP arithmetic without any I/O:
loss and extended sequence numbers (Appendix A), LSR/DLSR and round-trip time (§6.4.1)."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.sip.rtp import RtpError, seq_newer

log = logging.getLogger(__name__)
SR, RR, SDES, BYE = 200, 201, 202, 203
CNAME = 1
NTP_EPOCH = 2_208_988_800  # seconds from 1900 to 1970


class RtcpError(RtpError):
    """A datagram that is not a usable RTCP packet (dropped and counted, never raised to a call)."""


def ntp_timestamp(unix_time: float | None = None) -> int:
    """The 64-bit NTP timestamp of a wall-clock time (now by default)."""
    now = time.time() if unix_time is None else unix_time
    return int((now + NTP_EPOCH) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (§6.4.1 LSR; the units of round-trip arithmetic, 1/65536 s)."""
    return (ntp >> 16) & 0xFFFF_FFFF


def _header(packet_type: int, count: int, body_length: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, packet_type, body_length // 4)  # length: 32-bit words minus one


@dataclass
class ReportBlock:
    """What a receiver says about one source (§6.4.1). ``jitter`` is in RTP timestamp units; ``lsr`` and
    ``dlsr`` in 1/65536 s."""

    ssrc: int
    fraction_lost: int = 0  # lost/expected since the last report, in 1/256
    packets_lost: int = 0  # cumulative, signed 24-bit
    highest_sequence: int = 0  # extended: cycles << 16 | sequence
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def encode(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return struct.pack("!IIIIII", self.ssrc, (self.fraction_lost & 0xFF) << 24 | lost,
                           self.highest_sequence & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes) -> ReportBlock:
        if len(data) < 24:
            raise RtcpError("truncated RTCP report block")
        ssrc, loss, highest, jitter, lsr, dlsr = struct.unpack("!IIIIII", data[:24])
        lost = loss & 0xFFFFFF
        return cls(ssrc, loss >> 24, lost - (1 << 24) if lost & 0x800000 else lost, highest, jitter, lsr, dlsr)


def _blocks(data: bytes, count: int) -> list[ReportBlock]:
    if len(data) < 24 * count:
        raise RtcpError(f"{count} report blocks do not fit in {len(data)} bytes")
    return [ReportBlock.parse(data[24 * i:24 * i + 24]) for i in range(count)]


@dataclass
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int  # payload octets
    reports: list[ReportBlock] = field(default_factory=list)

    def encode(self) -> bytes:
        body = struct.pack("!IQIII", self.ssrc, self.ntp_timestamp, self.rtp_timestamp & 0xFFFFFFFF,
                           self.packet_count & 0xFFFFFFFF, self.octet_count & 0xFFFFFFFF)
        body += b"".join(block.encode() for block in self.reports)
        return _header(SR, len(self.reports), len(body)) + body

    @classmethod
    def parse(cls, count: int, body: bytes) -> SenderReport:
        if len(body) < 24:
            raise RtcpError("truncated RTCP sender report")
        ssrc, ntp, rtp, packets, octets = struct.unpack("!IQIII", body[:24])
        return cls(ssrc, ntp, rtp, packets, octets, _blocks(body[24:], count))


@dataclass
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def encode(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(block.encode() for block in self.reports)
        return _header(RR, len(self.reports), len(body)) + body

    @classmethod
    def parse(cls, count: int, body: bytes) -> ReceiverReport:
        if len(body) < 4:
            raise RtcpError("truncated RTCP receiver report")
        return cls(struct.unpack("!I", body[:4])[0], _blocks(body[4:], count))


@dataclass
class SdesChunk:
    ssrc: int
    items: list[tuple[int, bytes]]  # (item type, value); type 1 is the CNAME

    @property
    def cname(self) -> str | None:
        return next((value.decode(errors="replace") for kind, value in self.items if kind == CNAME), None)


@dataclass
class SourceDescription:
    chunks: list[SdesChunk]

    def encode(self) -> bytes:
        body = b""
        for chunk in self.chunks:
            data = struct.pack("!I", chunk.ssrc)
            data += b"".join(struct.pack("!BB", kind, len(value[:255])) + value[:255] for kind, value in chunk.items)
            data += b"\0" * (4 - len(data) % 4)  # the end-of-items null, then padding to a word
            body += data
        return _header(SDES, len(self.chunks), len(body)) + body

    @classmethod
    def parse(cls, count: int, body: bytes) -> SourceDescription:
        chunks, offset = [], 0
        for _ in range(count):
            if offset + 4 > len(body):
                raise RtcpError("truncated SDES chunk")
            ssrc, items = struct.unpack("!I", body[offset:offset + 4])[0], []
            offset += 4
            while True:
                if offset >= len(body):
                    raise RtcpError("SDES chunk without its terminating null")
                kind = body[offset]
                if kind == 0:
                    offset = (offset + 4) & ~3  # skip the null and the padding to the next word
                    break
                if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                    raise RtcpError("truncated SDES item")
                length = body[offset + 1]
                items.append((kind, body[offset + 2:offset + 2 + length]))
                offset += 2 + length
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)


@dataclass
class Bye:
    sources: list[int]
    reason: str = ""

    def encode(self) -> bytes:
        body = b"".join(struct.pack("!I", ssrc) for ssrc in self.sources)
        if self.reason:
            text = self.reason.encode()[:255]
            body += bytes([len(text)]) + text
            body += b"\0" * (-len(body) % 4)
        return _header(BYE, len(self.sources), len(body)) + body

    @classmethod
    def parse(cls, count: int, body: bytes) -> Bye:
        if len(body) < 4 * count:
            raise RtcpError("truncated RTCP BYE")
        sources = list(struct.unpack(f"!{count}I", body[:4 * count]))
        reason = ""
        if len(body) > 4 * count:
            length = body[4 * count]
            reason = body[4 * count + 1:4 * count + 1 + length].decode(errors="replace")
        return cls(sources, reason)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye
_PARSERS: dict[int, Callable[[int, bytes], RtcpPacket]] = {
    SR: SenderReport.parse, RR: ReceiverReport.parse, SDES: SourceDescription.parse, BYE: Bye.parse}


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """The packets of a compound RTCP datagram (§6.1), in order; unknown packet types are skipped."""
    if len(data) < 8 or data[1] not in (SR, RR):
        raise RtcpError("a compound RTCP packet starts with a sender or receiver report")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = struct.unpack("!BBH", data[offset:offset + 4])
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, not 2")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtcpError("RTCP length beyond the datagram")
        body = data[offset + 4:end]
        if first & 0x20:  # padding (only the last packet may have it): its last byte counts it
            if not body or body[-1] == 0 or body[-1] > len(body):
                raise RtcpError("bad RTCP padding")
            body = body[:-body[-1]]
        parser = _PARSERS.get(packet_type)
        if parser is not None:
            packets.append(parser(first & 0x1F, body))
        offset = end
    return packets


def encode_rtcp(packets: list[RtcpPacket]) -> bytes:
    return b"".join(packet.encode() for packet in packets)


class ReceptionStats:
    """What a receiver counts about one source for its report blocks (RFC 3550 A.1, A.3, without probation)."""

    def __init__(self, ssrc: int, sequence: int) -> None:
        self.ssrc = ssrc
        self.base = self.max = sequence
        self.cycles = self.received = self._expected_prior = self._received_prior = 0

    def count(self, sequence: int) -> None:
        self.received += 1
        if seq_newer(sequence, self.max):
            if sequence < self.max:
                self.cycles += 0x10000
            self.max = sequence

    @property
    def expected(self) -> int:
        return self.cycles + self.max - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    def report(self, jitter: float, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        """The next report block (fraction lost covers the time since the previous one)."""
        expected, received = self.expected, self.received
        interval = expected - self._expected_prior
        lost = interval - (received - self._received_prior)
        self._expected_prior, self._received_prior = expected, received
        fraction = min(255, (lost << 8) // interval) if lost > 0 else 0
        return ReportBlock(self.ssrc, fraction, expected - received, self.cycles + self.max, int(jitter), lsr, dlsr)


class Reporter:
    """One session's RTCP, without I/O: our compound reports (SR when ``sender`` is given, else RR; a block
    about the source we receive, carrying LSR/DLSR; SDES CNAME; BYE) and what the peer's reports tell us.
    ``now`` is monotonic seconds; ``wallclock`` (Unix seconds, default the clock) only feeds NTP timestamps."""

    def __init__(self, ssrc: int, cname: str) -> None:
        self.ssrc, self.cname = ssrc, cname
        self.rtt_ms: float | None = None
        self.peer_report: ReportBlock | None = None  # the peer's latest block about our stream
        self.received = 0  # reports taken from the peer
        self._last_sr: tuple[int, int, float] | None = None  # (its SSRC, middle NTP bits, our arrival time)

    def compound(self, now: float, source: ReceptionStats | None = None, jitter: float = 0.0,
                 sender: tuple[int, int, int] | None = None, bye: str | None = None,
                 wallclock: float | None = None) -> list[RtcpPacket]:
        """``sender``: (RTP timestamp now, packets sent, payload octets sent) when we sent since the last report."""
        blocks = []
        if source is not None:
            lsr = dlsr = 0
            if self._last_sr is not None and self._last_sr[0] == source.ssrc:
                lsr, dlsr = self._last_sr[1], int((now - self._last_sr[2]) * 65536)
            blocks.append(source.report(jitter, lsr, dlsr))
        first: RtcpPacket = ReceiverReport(self.ssrc, blocks)
        if sender is not None:
            first = SenderReport(self.ssrc, ntp_timestamp(wallclock), *sender, blocks)
        packets = [first, SourceDescription([SdesChunk(self.ssrc, [(CNAME, self.cname.encode())])])]
        return [*packets, Bye([self.ssrc], bye)] if bye is not None else packets

    def receive(self, packets: list[RtcpPacket], remote_ssrc: int | None, now: float,
                wallclock: float | None = None) -> bool:
        """Take the reports from ``remote_ssrc`` (from anyone while it is unknown); whether there was one."""
        taken = False
        for packet in packets:
            if isinstance(packet, Bye) and remote_ssrc in packet.sources:
                log.info("RTP peer %08x left (RTCP BYE: %s)", remote_ssrc, packet.reason or "no reason")
            if not isinstance(packet, SenderReport | ReceiverReport) or remote_ssrc not in (None, packet.ssrc):
                continue
            taken = True
            self.received += 1
            if isinstance(packet, SenderReport):
                self._last_sr = (packet.ssrc, ntp_middle(packet.ntp_timestamp), now)
            for block in packet.reports:
                if block.ssrc == self.ssrc:
                    self.peer_report = block
                    if block.lsr:  # RTT = arrival - LSR - DLSR, in 1/65536 s
                        rtt = (ntp_middle(ntp_timestamp(wallclock)) - block.lsr - block.dlsr) & 0xFFFFFFFF
                        self.rtt_ms = 0.0 if rtt >= 0x80000000 else rtt * 1000 / 65536
        return taken
