"""The call's audio codecs: G.711 µ-law/A-law at 8 kHz and G.722 at 16 kHz (the `g722` package), one instance
per call direction (G.722 keeps state between frames)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from appliance.audio import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from appliance.sip.sdp import SdpError


class Codec(Protocol):
    name: str
    rate: int  # audio sample rate (G.722: 16000, though its RTP clock runs at 8000)
    clock: int  # RTP timestamp rate

    def encode(self, pcm: np.ndarray) -> bytes: ...
    def decode(self, payload: bytes) -> np.ndarray: ...


class G711:
    rate = clock = 8000

    def __init__(self, name: str) -> None:
        self.name = name
        self._law = name == "PCMU"

    def encode(self, pcm: np.ndarray) -> bytes:
        return ulaw_encode(pcm) if self._law else alaw_encode(pcm)

    def decode(self, payload: bytes) -> np.ndarray:
        return ulaw_decode(payload) if self._law else alaw_decode(payload)


class G722Codec:
    name, rate, clock = "G722", 16000, 8000

    def __init__(self) -> None:
        import G722

        self._encoder = G722.G722(16000, 64000)
        self._decoder = G722.G722(16000, 64000)

    def encode(self, pcm: np.ndarray) -> bytes:
        return bytes(self._encoder.encode(np.ascontiguousarray(pcm, dtype=np.int16)))

    def decode(self, payload: bytes) -> np.ndarray:
        return np.frombuffer(self._decoder.decode(payload), dtype=np.int16).copy()


def make_codec(name: str) -> Codec:
    if name in ("PCMU", "PCMA"):
        return G711(name)
    if name == "G722":
        return G722Codec()
    raise SdpError(f"no codec {name}; the appliance speaks PCMU, PCMA and G722")
