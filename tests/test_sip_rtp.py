"""RTP packets, the jitter buffer (reordering, loss, late packets, wrap-around), concealment, RFC 4733 events,
and the call codecs on real speech."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from appliance.audio import read_audio
from appliance.sip.codecs import make_codec
from appliance.sip.rtp import Concealer, DtmfEvent, JitterBuffer, RtpError, RtpPacket
from appliance.sip.sdp import SdpError


def test_packet_round_trip_and_header_features() -> None:
    packet = RtpPacket(0, 65535, 2**32 - 160, 0xDEADBEEF, b"\x7f" * 160, marker=True)
    assert RtpPacket.parse(packet.encode()) == packet
    raw = bytearray(packet.encode())
    raw[0] |= 0x10 | 0x02  # two CSRCs and an extension
    extended = bytes(raw[:12]) + b"\0" * 8 + b"\xbe\xde\x00\x01" + b"\0" * 4 + bytes(raw[12:])
    assert RtpPacket.parse(extended).payload == packet.payload
    padded = bytearray(packet.encode() + b"\0\0\x03")
    padded[0] |= 0x20
    assert RtpPacket.parse(bytes(padded)).payload == packet.payload


@pytest.mark.parametrize("data", [b"", b"\x80" * 11, b"\x40" + b"\0" * 20, b"\x90" + b"\0" * 11,
                                  b"\xa0" + b"\0" * 10 + b"\xff", b"\x8f" + b"\0" * 20])
def test_bad_packets(data: bytes) -> None:
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


def feed(buffer: JitterBuffer, sequences: list[int], start: int = 0) -> list[int | None]:
    out: list[int | None] = []
    for i, seq in enumerate(sequences):
        buffer.put(RtpPacket(0, seq & 0xFFFF, (seq - start) * 160, 1, b""), arrival_s=i * 0.02)
        popped = buffer.pop()
        out.append(popped.sequence if popped else None)
    for _ in range(buffer.max_frames + 2):
        popped = buffer.pop()
        out.append(popped.sequence if popped else None)
    return out


def test_jitter_buffer_reorders_across_the_wrap() -> None:
    rng = random.Random(1)
    sequences = list(range(65500, 65600))
    shuffled = sequences[:]
    for i in range(0, len(shuffled) - 2, 3):  # swap neighbours: mild reordering
        if rng.random() < 0.5:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    buffer = JitterBuffer(160, 8000, min_frames=3)
    played = [s for s in feed(buffer, shuffled, 65500) if s is not None]
    assert played == [s & 0xFFFF for s in sequences] and buffer.lost == 0


def test_loss_and_late_packets() -> None:
    buffer = JitterBuffer(160, 8000, min_frames=2)
    sequences = [s for s in range(100, 140) if s not in (110, 111)]
    played = feed(buffer, sequences, 100)
    assert 110 not in played and buffer.lost == 2
    buffer.put(RtpPacket(0, 105, 5 * 160, 1, b""), arrival_s=2.0)  # long after it was played
    assert buffer.late == 1


def test_target_depth_grows_with_jitter() -> None:
    steady, jumpy = JitterBuffer(160, 8000), JitterBuffer(160, 8000)
    rng = random.Random(2)
    for i in range(200):
        steady.put(RtpPacket(0, i, i * 160, 1, b""), i * 0.02)
        jumpy.put(RtpPacket(0, i, i * 160, 1, b""), i * 0.02 + rng.uniform(0, 0.06))
        steady.pop(), jumpy.pop()
    assert steady.target == 1 and jumpy.target > 2


def test_concealment_fades_then_silence() -> None:
    c = Concealer()
    frame = np.full(160, 10000, np.int16)
    c.good(frame)
    levels = [int(np.abs(c.missing(160)).max()) for _ in range(5)]
    assert levels[0] < 10000 and levels[0] > levels[1] > levels[2] > 0 and levels[3] == levels[4] == 0


def test_dtmf_events() -> None:
    event = DtmfEvent.for_digit("#", end=True, duration=800)
    again = DtmfEvent.parse(event.encode())
    assert again == event and again.digit == "#" and again.end
    with pytest.raises(RtpError):
        DtmfEvent.for_digit("x", end=False, duration=0)
    with pytest.raises(RtpError):
        DtmfEvent.parse(b"\x01")


@pytest.mark.parametrize("name", ["PCMU", "PCMA", "G722"])
def test_codecs_on_real_speech(name: str) -> None:
    codec = make_codec(name)
    speech = read_audio(Path("/usr/share/asterisk/sounds/en/agent-alreadyon.wav"), codec.rate).samples
    pcm = (speech * 32767).astype(np.int16)
    frame = codec.rate // 50
    decoded = np.concatenate([codec.decode(codec.encode(pcm[i:i + frame]))
                              for i in range(0, len(pcm) - frame + 1, frame)])
    assert len(decoded) == len(pcm) // frame * frame
    reference = pcm[: len(decoded)].astype(np.float64)
    delay = 0 if name != "G722" else int(np.argmax(np.correlate(decoded[:4000].astype(np.float64),
                                                                reference[:4000], "full")) - 3999)
    aligned = decoded[max(delay, 0):].astype(np.float64)
    ref = reference[: len(aligned)]
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - aligned) ** 2))
    assert snr > 15, f"{name}: {snr:.1f} dB"
    with pytest.raises(SdpError):
        make_codec("OPUS")
