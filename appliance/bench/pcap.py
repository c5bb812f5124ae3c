"""Speech as an RTP capture (libpcap format) for SIPp's ``play_pcap_audio``: real prompts played into calls.

SIPp rewrites the addresses and ports and keeps the packets' timing, so a capture of 20 ms G.711 packets
is a caller speaking at the right pace.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from appliance.audio import alaw_encode, ulaw_encode
from appliance.audio.frame import float_to_int16

FRAME = 160  # 20 ms at 8 kHz
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}


def _udp_frame(payload: bytes, sequence: int) -> bytes:
    udp = struct.pack("!HHHH", 40000, 40000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sequence & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    ethernet = bytes(6) + bytes(6) + b"\x08\x00"
    return ethernet + ip + udp


def write_rtp_pcap(path: Path, pcm_8k: np.ndarray, codec: str = "PCMU", ssrc: int = 0x5EED) -> float:
    """Write ``pcm_8k`` (8 kHz, float in [-1, 1] or int16) as 20 ms RTP packets; returns the duration in s."""
    if codec not in PAYLOAD_TYPES:
        raise ValueError(f"pcap speech is G.711 only, not {codec}")
    encode = ulaw_encode if codec == "PCMU" else alaw_encode
    samples = float_to_int16(np.asarray(pcm_8k))
    samples = np.concatenate([samples, np.zeros(-len(samples) % FRAME, np.int16)])
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for index in range(len(samples) // FRAME):
        payload = encode(samples[index * FRAME:(index + 1) * FRAME])
        rtp = struct.pack("!BBHII", 0x80, (0x80 if index == 0 else 0) | PAYLOAD_TYPES[codec], index & 0xFFFF,
                          index * FRAME, ssrc) + payload
        frame = _udp_frame(rtp, index)
        at_us = index * 20_000
        out.append(struct.pack("<IIII", 1_700_000_000 + at_us // 1_000_000, at_us % 1_000_000, len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))
    return len(samples) / 8000
