"""A call's media with real peers on loopback: two RtpSessions sending real speech to each other in PCMU, PCMA
and G.722, DTMF both ways, RTCP reports and round-trip time, symmetric RTP past a wrong SDP address, garbage
datagrams, hold and resume, port exhaustion and a clean stop; RTCP packets from hand-built bytes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from appliance.audio import read_audio
from appliance.sip import rtcp
from appliance.sip.media import RATE, MediaError, MediaOptions, PortRange, RtpSession
from appliance.sip.rtp import DtmfEvent, RtpPacket
from appliance.sip.sdp import CODECS, Negotiated

SPEECH = Path("/usr/share/asterisk/sounds/en/agent-pass.wav")
PORTS = PortRange(20000, 30000)
FAST = MediaOptions(rtcp_interval=0.4)


@dataclass
class Peer:
    session: RtpSession
    audio: list[np.ndarray] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)

    @property
    def heard(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


async def peer(options: MediaOptions = FAST, ports: PortRange = PORTS) -> Peer:
    audio: list[np.ndarray] = []
    digits: list[str] = []
    session = await RtpSession.open("127.0.0.1", ports, audio.append, digits.append, options)
    return Peer(session, audio, digits)


def negotiated(codec: str, port: int, direction: str = "sendrecv") -> Negotiated:
    return Negotiated(codec, CODECS[codec][0], 101, 20, ("127.0.0.1", port), direction)


async def until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def call(codec: str = "PCMU") -> tuple[Peer, Peer]:
    a, b = await peer(), await peer()
    a.session.start(negotiated(codec, b.session.local_port))
    b.session.start(negotiated(codec, a.session.local_port))
    return a, b


def align(reference: np.ndarray, heard: np.ndarray) -> int:
    """The offset of ``reference`` in ``heard``, by FFT cross-correlation."""
    n = 1 << int(np.ceil(np.log2(len(reference) + len(heard))))
    spectrum = np.fft.rfft(heard.astype(np.float64), n) * np.conj(np.fft.rfft(reference.astype(np.float64), n))
    return int(np.argmax(np.fft.irfft(spectrum, n)[:len(heard)]))


def window_snrs(reference: np.ndarray, heard: np.ndarray, window: int = RATE // 4) -> list[float]:
    """SNR of each voiced quarter second of ``reference`` against ``heard``, each window aligned on its own
    near where the previous one was found: an adaptive jitter buffer may insert a frame or two under load."""
    cursor, snrs = align(reference, heard), []
    loud = 0.05 * np.abs(reference).max()
    for start in range(0, len(reference) - window + 1, window):
        ref = reference[start:start + window].astype(np.float64)
        low = max(0, cursor + start - RATE // 10)
        region = heard[low:cursor + start + window + RATE // 10]
        if np.sqrt(np.mean(ref**2)) < loud / 4:  # a pause: nothing to compare or to align on
            continue
        if len(region) < window:
            snrs.append(-np.inf)
            continue
        found = align(ref, region)
        segment = region[found:found + window].astype(np.float64)
        cursor = low + found - start
        error = max(float(np.sum((ref - segment) ** 2)), 1e-9) if len(segment) == window else None
        snrs.append(float(10 * np.log10(np.sum(ref**2) / error)) if error else -np.inf)
    return snrs


def active_span(samples: np.ndarray, threshold: float) -> int:
    loud = np.flatnonzero(np.abs(samples.astype(np.float64)) > threshold)
    return int(loud[-1] - loud[0]) if len(loud) else 0


def test_speech_goes_across_in_every_codec() -> None:
    """Three calls at once (one per codec), to keep the test short: the same speech must come out."""
    speech = (read_audio(SPEECH, RATE).samples * 32767).astype(np.int16)

    async def one(codec: str) -> tuple[list[np.ndarray], int, int, int]:
        a, b = await call(codec)
        try:
            await until(lambda: len(b.audio) > 0, what="B's first audio")
            pushed_at = len(b.audio)
            a.session.speaker.push(speech)
            await until(lambda: len(b.heard) > len(speech) + RATE // 4, timeout=10, what=f"the speech at B ({codec})")
            return b.audio, pushed_at, a.session.stats.packets_sent, b.session.stats.packets_received
        finally:
            await a.session.stop()
            await b.session.stop()

    async def scenario() -> list[tuple[list[np.ndarray], int, int, int]]:
        return await asyncio.gather(*(one(codec) for codec in ("PCMU", "PCMA", "G722")))

    for codec, (frames, pushed_at, sent, received) in zip(("PCMU", "PCMA", "G722"), asyncio.run(scenario()),
                                                          strict=True):
        assert received >= sent - 5 and all(len(frame) == RATE // 50 for frame in frames)  # 20 ms each
        heard = np.concatenate(frames)
        offset = align(speech, heard)
        latency_ms = (offset - pushed_at * RATE // 50) * 1000 / RATE
        snrs = window_snrs(speech, heard)
        good = sum(snr > 20 for snr in snrs) / len(snrs)
        print(f"{codec}: latency {latency_ms:.0f} ms, SNR median {np.median(snrs):.1f} dB, {good:.0%} of "
              f"{len(snrs)} windows > 20 dB")
        assert np.median(snrs) > 25 and good > 0.8, (codec, snrs)
        threshold = 0.05 * np.abs(speech).max()
        assert abs(active_span(heard, threshold) - active_span(speech, threshold)) < RATE // 8, codec  # 125 ms


def test_dtmf_both_ways_exactly_once() -> None:
    async def scenario() -> tuple[Peer, Peer]:
        a, b = await call("PCMA")
        try:
            await until(lambda: b.session.stats.packets_received > 3, what="media")
            await asyncio.gather(a.session.send_dtmf("1"), b.session.send_dtmf("#", duration_ms=100))
            await a.session.send_dtmf("9", duration_ms=60)
            await until(lambda: len(a.digits) >= 1 and len(b.digits) >= 2, what="the digits")
            settled = a.session.stats.packets_received + 10  # 200 ms more for a duplicate to show up
            await until(lambda: a.session.stats.packets_received > settled, what="more packets")
            with pytest.raises(MediaError):
                await a.session.send_dtmf("1", duration_ms=10)
            return a, b
        finally:
            await a.session.stop()
            await b.session.stop()

    a, b = asyncio.run(scenario())
    assert b.digits == ["1", "9"] and a.digits == ["#"]
    assert b.session.stats.dtmf_received == 2 and b.session.stats.lost == 0


def test_rtcp_reports_and_round_trip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "appliance.sip.rtcp")

    async def scenario() -> None:
        a, b = await call("G722")
        try:
            both = (a.session, b.session)
            await until(lambda: all(s.stats.rtt_ms is not None for s in both), timeout=4, what="RTT on both sides")
            for session in both:
                stats, report = session.stats, session.stats.peer_report
                assert report is not None and stats.reports_received >= 1 and stats.reports_sent >= 1
                assert report.packets_lost == 0 and report.fraction_lost == 0 and report.jitter < 8000
                assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 100 and stats.jitter_ms < 20
                print(f"rtt {stats.rtt_ms:.2f} ms, jitter {stats.jitter_ms:.2f} ms, {stats}")
        finally:
            await a.session.stop()
            await until(lambda: "left (RTCP BYE: call ended)" in caplog.text, timeout=2, what="BYE at B")
            await b.session.stop()

    asyncio.run(scenario())


def test_symmetric_rtp_latches_past_a_wrong_address_and_ignores_garbage() -> None:
    async def scenario() -> None:
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        a, b = await peer(), await peer()
        try:
            b.session.start(negotiated("PCMU", dead_port))  # B's SDP says the wrong port
            assert b.session.stats.remote == ("127.0.0.1", dead_port)
            port = b.session.local_port
            garbage = [b"", b"\x00" * 3, b"\x40" + b"\0" * 20, bytes(random.Random(3).randbytes(200))]
            for data in garbage:
                stranger.sendto(data, ("127.0.0.1", port))
                stranger.sendto(data, ("127.0.0.1", port + 1))
            await until(lambda: b.session.stats.malformed >= 2 * len(garbage) - 1, what="garbage counted")
            assert b.session.stats.packets_received == 0 and b.session.stats.remote == ("127.0.0.1", dead_port)

            a.session.start(negotiated("PCMU", port))
            await until(lambda: b.session.stats.remote == ("127.0.0.1", a.session.local_port), what="latching")
            b.session.speaker.push(np.full(RATE // 2, 8000, np.int16))
            await until(lambda: np.abs(a.heard).max(initial=0) > 4000, what="B's audio at A")
            intruder = RtpPacket(0, 1, 160, 0x1234, b"\xff" * 160).encode()
            received = b.session.stats.packets_received
            for _ in range(5):
                stranger.sendto(intruder, ("127.0.0.1", port))
            await until(lambda: b.session.stats.ignored >= 5, what="the intruder ignored")
            assert b.session.stats.remote == ("127.0.0.1", a.session.local_port)
            assert b.session.stats.packets_received >= received and b.session.stats.late == 0
        finally:
            stranger.close()
            await a.session.stop()
            await b.session.stop()

    asyncio.run(scenario())


def raw_udp() -> socket.socket:
    """A plain non-blocking UDP socket on loopback, playing a peer by hand."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    return raw


def test_packets_on_the_wire_with_a_raw_peer() -> None:
    """A plain socket as the peer: our RTP and RFC 4733 packets as sent; its repeated event packets reported
    once; its stream restarted with a new SSRC from the same address accepted."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        raw = raw_udp()
        b = await peer()
        port = b.session.local_port

        async def receive() -> RtpPacket:
            while True:
                data, addr = await asyncio.wait_for(loop.sock_recvfrom(raw, 2048), 2)
                if addr[1] == port:  # RTP, not RTCP
                    return RtpPacket.parse(data)

        def send(packet: RtpPacket) -> None:
            raw.sendto(packet.encode(), ("127.0.0.1", port))

        try:
            b.session.start(negotiated("PCMU", raw.getsockname()[1]))
            first, second = await receive(), await receive()
            assert first.marker and not second.marker and first.payload_type == 0 and len(first.payload) == 160
            assert (second.sequence - first.sequence) & 0xFFFF == 1 and second.timestamp - first.timestamp == 160
            dtmf = asyncio.ensure_future(b.session.send_dtmf("7", duration_ms=100))
            packets = [await receive() for _ in range(12)]
            await dtmf
            events = [p for p in packets if p.payload_type == 101]
            parsed = [DtmfEvent.parse(p.payload) for p in events]
            assert [e.duration for e in parsed] == [160, 320, 480, 640, 800, 800, 800]
            assert [e.end for e in parsed] == [False] * 4 + [True] * 3 and {e.digit for e in parsed} == {"7"}
            assert events[0].marker and not any(p.marker for p in events[1:])
            assert len({p.timestamp for p in events}) == 1
            after = packets[packets.index(events[-1]) + 1]
            assert after.payload_type == 0 and after.marker and after.timestamp == events[0].timestamp + 7 * 160
            assert all((q.sequence - p.sequence) & 0xFFFF == 1 for p, q in itertools.pairwise(packets))

            for seq in range(10):
                send(RtpPacket(0, 100 + seq, 1000 + 160 * seq, 1, b"\xff" * 160))
            for number, (end, duration) in enumerate([(False, 160), (False, 320), (True, 480), (True, 480),
                                                      (True, 480)]):
                send(RtpPacket(101, 110 + number, 2600, 1, DtmfEvent.for_digit("5", end, duration).encode(),
                               marker=number == 0))
            send(RtpPacket(101, 115, 3400, 1, DtmfEvent.for_digit("*", True, 480).encode()))  # start lost
            send(RtpPacket(101, 116, 3400, 1, b"\x01"))  # a truncated event
            await until(lambda: b.session.stats.packets_received == 17, what="the raw packets")
            for seq in range(5):  # the peer restarts its stream: new SSRC, new sequence numbers
                send(RtpPacket(0, 40000 + seq, 99 + 160 * seq, 2, b"\xff" * 160))
            await until(lambda: b.session.stats.packets_received == 22, what="the restarted stream")
            stats = b.session.stats
            assert b.digits == ["5", "*"] and stats.ignored == 0 and stats.malformed == 1 and stats.lost == 0
        finally:
            raw.close()
            await b.session.stop()

    asyncio.run(scenario())


def test_talkspurt_starts_are_reported_with_their_send_time() -> None:
    """``on_talkspurt`` gets the loop time of each packet that starts speech (marker bit set), not the first
    packet's (silent, marked too), and again when speech resumes after silence."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        raw = raw_udp()
        b = await peer()
        spurts: list[float] = []
        b.session.on_talkspurt = spurts.append
        tone = (8000 * np.sin(np.arange(RATE // 10) * 2 * np.pi * 440 / RATE)).astype(np.int16)  # 100 ms

        async def receive() -> RtpPacket:
            while True:
                data, addr = await asyncio.wait_for(loop.sock_recvfrom(raw, 2048), 2)
                if addr[1] == b.session.local_port:
                    return RtpPacket.parse(data)

        try:
            b.session.start(negotiated("PCMU", raw.getsockname()[1]))
            assert (await receive()).marker and not spurts  # the stream's first packet: marked, but silent
            for n in (1, 2):
                pushed = loop.time()
                b.session.speaker.push(tone)
                while (packet := await receive()).payload == b"\xff" * 160:
                    pass
                assert packet.marker and len(spurts) == n and pushed <= spurts[-1] <= loop.time()
                silent = 0
                while silent < 3:  # the tone ends: the next push is a new talkspurt
                    packet = await receive()
                    silent = silent + 1 if packet.payload == b"\xff" * 160 else 0
                    assert not packet.marker
            assert len(spurts) == 2
        finally:
            raw.close()
            await b.session.stop()

    asyncio.run(scenario())


def test_hold_and_resume() -> None:
    async def scenario() -> None:
        a, b = await call("PCMU")
        try:
            await until(lambda: b.session.stats.packets_received > 5, what="media")
            a.session.update(negotiated("PCMU", b.session.local_port, "recvonly"))  # B put us on hold
            b.session.update(negotiated("PCMU", a.session.local_port, "sendonly"))
            sent = a.session.stats.packets_sent
            heard = len(a.audio)
            await until(lambda: len(a.audio) > heard + 10, what="A still hears B")
            assert a.session.stats.packets_sent == sent
            with pytest.raises(MediaError):
                await a.session.send_dtmf("5")
            a.session.update(negotiated("PCMU", b.session.local_port))
            await until(lambda: a.session.stats.packets_sent > sent + 5, what="A sending again")
        finally:
            await a.session.stop()
            await b.session.stop()

    asyncio.run(scenario())


def test_port_range_exhaustion_and_a_clean_stop() -> None:
    async def scenario() -> None:
        before = asyncio.all_tasks()
        rng = random.Random()
        for _ in range(50):  # a free block of four ports
            base = rng.randrange(40000, 50000, 2)
            probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
            try:
                for i, probe in enumerate(probes):
                    probe.bind(("127.0.0.1", base + i))
                break
            except OSError:
                continue
            finally:
                for probe in probes:
                    probe.close()
        ports = PortRange(base, base + 3)
        a, b = await peer(ports=ports), await peer(ports=ports)
        assert {a.session.local_port, b.session.local_port} == {base, base + 2}
        with pytest.raises(MediaError, match="no free RTP/RTCP port pair"):
            await peer(ports=ports)
        a.session.start(negotiated("PCMU", b.session.local_port))
        b.session.start(negotiated("PCMU", a.session.local_port))
        await until(lambda: a.session.stats.reports_sent > 0, what="a report")
        dtmf = asyncio.ensure_future(a.session.send_dtmf("4", duration_ms=2000))
        await asyncio.sleep(0)
        await a.session.stop()
        with pytest.raises(MediaError):
            await dtmf
        await a.session.stop()  # idempotent
        await b.session.stop()
        assert asyncio.all_tasks() == before
        again = await peer(ports=ports)  # the ports were released
        await again.session.stop()

    asyncio.run(scenario())
    with pytest.raises(MediaError):
        PortRange(5001, 5001)


def test_rtcp_compound_from_hand_built_bytes() -> None:
    data = bytes.fromhex(
        "81c8000c" "11223344" "e1b2c3d4" "80000000" "00001000" "00000064" "00003e80"  # SR, one report block
        "55667788" "40fffffe" "0001000a" "00000010" "b2c3d480" "00010000"
        "81ca0005" "11223344" "010b" + b"bob@example".hex() + "00" "0000"  # SDES CNAME, a null, padding
        "81cb0003" "11223344" "04" + b"done".hex() + "000000")  # BYE with a reason
    sr, sdes, bye = rtcp.parse_rtcp(data)
    assert sr == rtcp.SenderReport(0x11223344, 0xE1B2C3D480000000, 0x1000, 100, 16000, [rtcp.ReportBlock(
        0x55667788, 64, -2, 0x1000A, 16, 0xB2C3D480, 0x10000)])
    assert isinstance(sdes, rtcp.SourceDescription) and sdes.chunks[0].cname == "bob@example"
    assert bye == rtcp.Bye([0x11223344], "done")
    assert rtcp.encode_rtcp([sr, sdes, bye]) == data
    assert rtcp.ntp_middle(sr.ntp_timestamp) == 0xC3D48000


def test_rtcp_round_trips_skips_unknown_types_and_rejects_bad_packets() -> None:
    packets: list[rtcp.RtcpPacket] = [rtcp.ReceiverReport(7, [rtcp.ReportBlock(9, 3, 1000, 70000, 5, 1, 2)]),
                                      rtcp.SourceDescription([rtcp.SdesChunk(7, [(1, b"abc"), (6, b"tool")]),
                                                              rtcp.SdesChunk(8, [])]),
                                      rtcp.Bye([7, 8])]
    data = rtcp.encode_rtcp(packets)
    assert rtcp.parse_rtcp(data) == packets
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 7, b"name")  # APP: skipped
    assert rtcp.parse_rtcp(data + app) == packets
    padded = bytearray(rtcp.Bye([7]).encode() + b"\0\0\0\x04")
    padded[0] |= 0x20
    padded[3] += 1
    assert rtcp.parse_rtcp(packets[0].encode() + bytes(padded))[1] == rtcp.Bye([7])
    for bad in (b"", data[:-1], rtcp.Bye([7]).encode(), b"\x41\xc9\x00\x01\0\0\0\0", data[:20]):
        with pytest.raises(rtcp.RtcpError):
            rtcp.parse_rtcp(bad)


def test_reception_stats_across_the_wrap() -> None:
    stats = rtcp.ReceptionStats(1, 65530)
    for seq in [65530, 65531, 65533, 65534, 65535, 0, 2, 1, 5]:
        stats.count(seq)
    assert stats.expected == 12 and stats.lost == 3 and stats.cycles == 0x10000
    block = stats.report(jitter=12.7, lsr=5, dlsr=6)
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (64, 3, 0x10005)
    for seq in range(6, 10):
        stats.count(seq)
    assert stats.report(jitter=0).fraction_lost == 0


def test_reporter_round_trip_time_from_lsr_and_dlsr() -> None:
    ours, theirs = rtcp.Reporter(1, "us@host"), rtcp.Reporter(2, "them@host")
    sr = ours.compound(10.0, sender=(8000, 50, 8000), wallclock=1000.0)  # we sent: an SR
    assert isinstance(sr[0], rtcp.SenderReport)
    assert sr[1] == rtcp.SourceDescription([rtcp.SdesChunk(1, [(1, b"us@host")])])
    assert theirs.receive(sr, remote_ssrc=1, now=5.0) and not theirs.receive(sr, remote_ssrc=3, now=5.0)
    reception = rtcp.ReceptionStats(1, 100)
    for seq in range(100, 150):
        reception.count(seq)
    rr = theirs.compound(5.25, reception, jitter=40.0, bye="done")  # 250 ms after the SR arrived
    assert isinstance(rr[0], rtcp.ReceiverReport) and rr[2] == rtcp.Bye([2], "done")
    block = rr[0].reports[0]
    assert (block.ssrc, block.highest_sequence, block.jitter, block.dlsr) == (1, 149, 40, 16384)
    assert ours.receive(rtcp.parse_rtcp(rtcp.encode_rtcp(rr)), remote_ssrc=2, now=10.4, wallclock=1000.4)
    assert ours.peer_report == block and ours.received == 1
    assert ours.rtt_ms is not None and abs(ours.rtt_ms - 150) < 0.1  # 400 ms round trip minus 250 held
