"""The media of one SIP call: RTP audio and RFC 4733 DTMF both ways, reported on by RTCP (RFC 3550).

``session = await RtpSession.open(host, ports, on_audio, on_dtmf)`` binds an even RTP port and the RTCP port
above it (``session.local_port`` goes into the SDP answer); ``session.start(negotiated)`` starts media with the
agreed codec and remote address; ``session.update(negotiated)`` applies a re-INVITE (hold, resume, a moved
peer) without rebinding; ``await session.stop()`` sends RTCP BYE and ends every task it started.

Audio is 16 kHz mono both ways, whatever the codec: push speech (float or int16) into ``session.speaker``;
``on_audio`` gets one ptime frame of 16 kHz int16 every ptime, from the first audio packet received on (losses
concealed). ``session.on_talkspurt``, if set, gets the loop time at which each talkspurt went out (a packet with
the marker bit that carries speech: the first sound of an answer); ``session.on_heard``, if set, gets each frame
just before ``on_audio`` does (a tap for measurements, e.g. `appliance bench sip`). Callbacks are plain
functions called on the event loop: they must not block.

Symmetric RTP (RFC 4961): the first valid RTP packet latches the peer's address; from then on RTP goes there,
not to the SDP's address, and other sources are ignored, except a new SSRC from the latched address (the peer
restarted its stream). RTCP goes to the latched RTP port + 1 until RTCP arrives from somewhere.

``Negotiated.direction`` is ours: audio is sent only when it is sendrecv/sendonly (speech waits in the speaker
meanwhile) and played only when sendrecv/recvonly; RTCP flows whatever the direction (RFC 3264 §5.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from appliance.audio.frame import ASR_RATE
from appliance.audio.queue import PcmQueue
from appliance.sip import rtcp
from appliance.sip.codecs import Codec, make_codec
from appliance.sip.mediaports import Address, Endpoint, MediaError, PortRange, bind_pair
from appliance.sip.resample import Resampler
from appliance.sip.rtp import Concealer, DtmfEvent, JitterBuffer, RtpError, RtpPacket
from appliance.sip.sdp import Negotiated

log = logging.getLogger(__name__)
AudioHandler = Callable[[np.ndarray], None]
DtmfHandler = Callable[[str], None]
T = TypeVar("T")
RATE = ASR_RATE  # the rate of speaker and on_audio
SENDING, RECEIVING = ("sendrecv", "sendonly"), ("sendrecv", "recvonly")  # our direction, as Negotiated states it


@dataclass(frozen=True)
class MediaOptions:
    rtcp_interval: float = 5.0
    """Seconds between RTCP reports, randomised 0.5-1.5× (§6.2); the first goes after 0.5-1× min(1 s, this)."""
    jitter_min_frames: int = 2
    jitter_max_frames: int = 10
    cname: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # random, as RFC 7022 advises


@dataclass
class MediaStats:
    packets_sent: int = 0
    bytes_sent: int = 0  # RTP payload octets, as the SR counts them
    packets_received: int = 0
    bytes_received: int = 0
    lost: int = 0  # expected minus received (RFC 3550 A.3)
    late: int = 0  # arrived after their turn to play
    malformed: int = 0  # datagrams that were not RTP/RTCP
    ignored: int = 0  # from another address or SSRC, or with a payload type not negotiated
    dtmf_received: int = 0
    reports_sent: int = 0
    reports_received: int = 0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None  # from the peer's last report about us that carried LSR/DLSR
    peer_report: rtcp.ReportBlock | None = None  # what the peer last reported about our stream
    remote: Address | None = None  # where RTP goes: the latched source, else the SDP's address


@dataclass
class _Source:
    """The remote source we play: its counts for RTCP, jitter buffer and the DTMF events already reported."""

    stats: rtcp.ReceptionStats
    buffer: JitterBuffer
    dtmf_seen: deque[int] = field(default_factory=lambda: deque(maxlen=16))  # event timestamps


@dataclass
class _DtmfSend:
    digit: str
    duration: int  # RTP clock units
    done: asyncio.Future[None]
    timestamp: int | None = None
    elapsed: int = 0
    ends: int = 0


def _address(remote: tuple[str, int]) -> Address | None:
    """Where the SDP says to send, or None: held with 0.0.0.0, port 0, or a host name (wait for latching)."""
    host, port = remote
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        log.info("SDP names host %r, not an address: RTP waits for the peer's first packet", host)
        return None
    return None if unspecified or not 0 < port < 65536 else (host, port)


class RtpSession:
    """One call's RTP and RTCP. Create with ``await RtpSession.open(...)``."""

    def __init__(self, rtp_end: Endpoint, rtcp_end: Endpoint, port: int, on_audio: AudioHandler,
                 on_dtmf: DtmfHandler, options: MediaOptions) -> None:
        self._rtp, self._rtcp, self.local_port = rtp_end, rtcp_end, port
        rtp_end.receive, rtcp_end.receive = self._on_rtp, self._on_rtcp
        self.on_audio, self.on_dtmf, self.options = on_audio, on_dtmf, options
        self.speaker = PcmQueue()  # 16 kHz mono speech to send
        self.on_talkspurt: Callable[[float], None] | None = None  # see the module docstring
        self.on_heard: AudioHandler | None = None  # likewise
        self._ssrc, self._seq, self._timestamp = secrets.randbits(32), secrets.randbits(16), secrets.randbits(32)
        self._negotiated: Negotiated | None = None
        self._encoder: Codec | None = None
        self._decoder: Codec | None = None
        self._down = self._up = Resampler(RATE, RATE)
        self._concealer = Concealer()
        self._sdp_remote: Address | None = None
        self._latched: Address | None = None
        self._rtcp_latched: Address | None = None
        self._source: _Source | None = None
        self._dtmf: deque[_DtmfSend] = deque()
        self._marker = self._silent = True
        self._playing = self._closed = self._sent_since_report = False
        self._tick_at = (0.0, self._timestamp)  # (loop time, RTP timestamp) of the last tick, for the SR
        self._tasks: list[asyncio.Task[None]] = []
        self._stats = MediaStats()  # counters; lost and late of the sources already replaced
        self._reporter = rtcp.Reporter(self._ssrc, options.cname)

    @classmethod
    async def open(cls, host: str, ports: PortRange, on_audio: AudioHandler, on_dtmf: DtmfHandler,
                   options: MediaOptions | None = None) -> RtpSession:
        """Bind the RTP/RTCP port pair; nothing is sent until ``start``."""
        return cls(*await bind_pair(host, ports), on_audio, on_dtmf, options or MediaOptions())

    def start(self, negotiated: Negotiated) -> None:
        if self._closed or self._tasks:
            raise MediaError("this media session was already started" if self._tasks else "media session stopped")
        self.update(negotiated)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._clock(), name=f"rtp-{self.local_port}"),
                       loop.create_task(self._rtcp_loop(), name=f"rtcp-{self.local_port + 1}")]
        for task in self._tasks:
            task.add_done_callback(_report_crash)

    def update(self, negotiated: Negotiated) -> None:
        """Apply an (re-)negotiation: direction, remote address, codec, payload types, ptime."""
        old = self._negotiated
        if old is None or (old.codec, old.ptime) != (negotiated.codec, negotiated.ptime):
            encoder = make_codec(negotiated.codec)
            if (encoder.clock * negotiated.ptime) % 1000 or not 10 <= negotiated.ptime <= 120:
                raise MediaError(f"unusable ptime {negotiated.ptime} ms")
            self._encoder, self._decoder = encoder, make_codec(negotiated.codec)  # G.722 keeps state per direction
            self._down, self._up = Resampler(RATE, self._encoder.rate), Resampler(self._decoder.rate, RATE)
            self._retire_source()
            self._marker = True
        if old is not None and (old.direction in RECEIVING) != (negotiated.direction in RECEIVING):
            self._retire_source()  # a held stream's buffer is stale: start afresh
        remote = _address(negotiated.remote)
        if old is not None and remote != self._sdp_remote:
            self._latched = self._rtcp_latched = None  # the peer moved: learn its address again
        self._sdp_remote, self._negotiated = remote, negotiated

    async def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Send one RFC 4733 event (audio pauses meanwhile); returns once its last end packet is sent."""
        negotiated = self._negotiated
        if negotiated is None or self._closed or self._encoder is None:
            raise MediaError("media is not running")
        if negotiated.dtmf_payload_type is None:
            raise MediaError("the peer did not negotiate telephone-event (RFC 4733): cannot send DTMF")
        if negotiated.direction not in SENDING:
            raise MediaError(f"cannot send DTMF: the call's direction is {negotiated.direction}")
        if not 40 <= duration_ms <= 8000:
            raise MediaError(f"DTMF duration {duration_ms} ms is outside 40-8000 ms")
        DtmfEvent.for_digit(digit, False, 0)  # RtpError for a non-digit
        job = _DtmfSend(digit, self._encoder.clock * duration_ms // 1000, asyncio.get_running_loop().create_future())
        self._dtmf.append(job)
        await job.done

    @property
    def stats(self) -> MediaStats:
        """A snapshot of the counters."""
        source, reporter = self._source, self._reporter
        return replace(self._stats, lost=self._stats.lost + (source.stats.lost if source else 0),
                       late=self._stats.late + (source.buffer.late if source else 0),
                       jitter_ms=source.buffer.jitter * 1000 / source.buffer.clock if source else 0.0,
                       rtt_ms=reporter.rtt_ms, reports_received=reporter.received,
                       peer_report=reporter.peer_report, remote=self._latched or self._sdp_remote)

    async def stop(self) -> None:
        """Send RTCP BYE, cancel and await every task, close the sockets. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._negotiated is not None:
            self._send_rtcp(bye="call ended")
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._dtmf:
            if not job.done.done():
                job.done.set_exception(MediaError("media stopped before the DTMF event was sent"))
        self._dtmf.clear()
        for endpoint in (self._rtp, self._rtcp):
            if endpoint.transport is not None:
                endpoint.transport.close()

    # sending

    async def _clock(self) -> None:
        """Every ptime: send a frame, play a frame. Deadlines follow the loop clock, so timing does not drift."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            self._send_tick(loop.time())
            self._play_tick()
            assert self._negotiated is not None
            deadline += self._negotiated.ptime / 1000
            now = loop.time()
            if deadline < now - 0.1:  # the loop stalled: carry on from now rather than send a burst
                deadline = now
            await asyncio.sleep(deadline - now)

    def _send_tick(self, now: float) -> None:
        negotiated, encoder = self._negotiated, self._encoder
        assert negotiated is not None and encoder is not None
        timestamp = self._timestamp
        self._timestamp = (timestamp + encoder.clock * negotiated.ptime // 1000) & 0xFFFFFFFF
        self._tick_at = (now, timestamp)
        remote = self._latched or self._sdp_remote
        if remote is None or negotiated.direction not in SENDING:
            self._marker = True
            while self._dtmf:
                job = self._dtmf.popleft()
                if not job.done.done():
                    job.done.set_exception(MediaError("no way to send DTMF: the call is on hold or has no address"))
            return
        if self._dtmf and negotiated.dtmf_payload_type is not None:
            packet = self._dtmf_packet(negotiated.dtmf_payload_type, timestamp,
                                       encoder.clock * negotiated.ptime // 1000)
        else:
            pcm = self._down.process(self.speaker.take(RATE * negotiated.ptime // 1000))
            speech = bool(pcm.any())
            marker, self._marker, self._silent = self._marker or (speech and self._silent), False, not speech
            packet = RtpPacket(negotiated.payload_type, self._seq, timestamp, self._ssrc, encoder.encode(pcm), marker)
            if marker and speech and self.on_talkspurt is not None:
                _call(self.on_talkspurt, now)
        self._rtp.send(packet.encode(), remote)
        self._seq = (self._seq + 1) & 0xFFFF
        self._stats.packets_sent += 1
        self._stats.bytes_sent += len(packet.payload)
        self._sent_since_report = True

    def _dtmf_packet(self, payload_type: int, timestamp: int, frame: int) -> RtpPacket:
        job = self._dtmf[0]
        start = job.timestamp is None
        if job.timestamp is None:
            job.timestamp = timestamp
        job.elapsed = min(job.duration, job.elapsed + frame)
        end = job.elapsed >= job.duration
        if end:
            job.ends += 1
            if job.ends == 3:  # the end packet goes three times (RFC 4733 §2.5.1.4)
                self._dtmf.popleft()
                self._marker = True  # audio after the event starts a new talkspurt
                if not job.done.done():
                    job.done.set_result(None)
        event = DtmfEvent.for_digit(job.digit, end, job.elapsed)
        return RtpPacket(payload_type, self._seq, job.timestamp, self._ssrc, event.encode(), start)

    # receiving

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self._stats.malformed += 1
            return
        negotiated = self._negotiated
        if negotiated is None or self._closed or packet.payload_type not in (negotiated.payload_type,
                                                                             negotiated.dtmf_payload_type):
            self._stats.ignored += 1
            return
        if self._latched is None:
            self._latched = addr
            log.info("RTP from %s:%d: sending there (symmetric RTP)", *addr)
        elif addr != self._latched:
            self._stats.ignored += 1
            return
        source = self._source
        if source is None or packet.ssrc != source.stats.ssrc:
            self._retire_source()
            assert self._decoder is not None
            frame = self._decoder.clock * negotiated.ptime // 1000
            buffer = JitterBuffer(frame, self._decoder.clock, self.options.jitter_min_frames,
                                  self.options.jitter_max_frames)
            source = self._source = _Source(rtcp.ReceptionStats(packet.ssrc, packet.sequence), buffer)
        source.stats.count(packet.sequence)
        self._stats.packets_received += 1
        self._stats.bytes_received += len(packet.payload)
        if negotiated.direction not in RECEIVING:
            return
        if packet.payload_type == negotiated.dtmf_payload_type:
            self._on_event(source, packet)
        else:
            source.buffer.put(packet, asyncio.get_running_loop().time())
            self._playing = True

    def _on_event(self, source: _Source, packet: RtpPacket) -> None:
        try:
            event = DtmfEvent.parse(packet.payload)
        except RtpError:
            self._stats.malformed += 1
            return
        if packet.timestamp in source.dtmf_seen:  # an update or a repeated end of an event already reported
            return
        source.dtmf_seen.append(packet.timestamp)
        if event.event < len(DtmfEvent.DIGITS):
            self._stats.dtmf_received += 1
            _call(self.on_dtmf, event.digit)

    def _play_tick(self) -> None:
        negotiated, decoder, source = self._negotiated, self._decoder, self._source
        if source is None or not self._playing or negotiated is None or negotiated.direction not in RECEIVING:
            return
        assert decoder is not None
        packet = source.buffer.pop()
        if packet is not None:
            pcm = self._concealer.good(decoder.decode(packet.payload))
        else:
            pcm = self._concealer.missing(decoder.rate * negotiated.ptime // 1000)
        frame = self._up.process(pcm)
        if self.on_heard is not None:
            _call(self.on_heard, frame)
        _call(self.on_audio, frame)

    def _retire_source(self) -> None:
        if self._source is not None:
            self._stats.lost += self._source.stats.lost
            self._stats.late += self._source.buffer.late
        self._source = None

    # RTCP

    async def _rtcp_loop(self) -> None:
        interval = self.options.rtcp_interval
        await asyncio.sleep(random.uniform(0.5, 1.0) * min(1.0, interval))
        while True:
            self._send_rtcp()
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))

    def _send_rtcp(self, bye: str | None = None) -> None:
        rtp_remote = self._latched or self._sdp_remote
        remote = self._rtcp_latched or ((rtp_remote[0], rtp_remote[1] + 1) if rtp_remote else None)
        if remote is None or self._encoder is None:
            return
        now, sender, source = asyncio.get_running_loop().time(), None, self._source
        if self._sent_since_report:
            at, timestamp = self._tick_at
            sender = (timestamp + int((now - at) * self._encoder.clock), self._stats.packets_sent,
                      self._stats.bytes_sent)
        self._sent_since_report = False
        packets = self._reporter.compound(now, source.stats if source else None,
                                          source.buffer.jitter if source else 0.0, sender, bye)
        self._rtcp.send(rtcp.encode_rtcp(packets), remote)
        self._stats.reports_sent += 1

    def _on_rtcp(self, data: bytes, addr: Address) -> None:
        if self._negotiated is None or self._closed or (self._rtcp_latched and addr != self._rtcp_latched):
            return
        try:
            packets = rtcp.parse_rtcp(data)
        except RtpError:
            self._stats.malformed += 1
            return
        remote_ssrc = self._source.stats.ssrc if self._source else None
        if self._reporter.receive(packets, remote_ssrc, asyncio.get_running_loop().time()):
            self._rtcp_latched = self._rtcp_latched or addr
        else:
            self._stats.ignored += 1


def _call(handler: Callable[[T], None], value: T) -> None:
    try:
        handler(value)
    except Exception:  # the caller's bug must not stop the call's media clock
        log.exception("media callback %r failed", handler)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("media task %s died", task.get_name(), exc_info=task.exception())
