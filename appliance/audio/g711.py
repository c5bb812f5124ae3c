"""G.711 µ-law and A-law codecs for telephony audio, vectorised with lookup tables built once at import.

Bit-exact with the Sun reference implementation used by CPython's audioop (lin2ulaw/lin2alaw with width 2):
µ-law encodes the top 14 bits of each sample, A-law the top 13. The ITU-T G.191 reference µ-law encoder rounds
negative samples one step differently at 508 of the 65536 inputs (one's instead of two's complement); decoding and
A-law agree with G.191 everywhere.
"""

from __future__ import annotations

import numpy as np

from appliance.audio.errors import AudioError

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _all_int16() -> np.ndarray:
    """Every int16 value as int32, ordered by its uint16 bit pattern (so a uint16 view indexes the table)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> np.ndarray:
    value = _all_int16() >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEG_END, magnitude, side="left")
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0xF)
    code = np.where(segment >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    value = _all_int16() >> 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    magnitude = np.where(value >= 0, value, -value - 1)
    segment = np.searchsorted(_ALAW_SEG_END, magnitude, side="left")
    quant = np.where(segment < 2, magnitude >> 1, magnitude >> np.maximum(segment, 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | quant)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    t = (code & 0x0F) << 4
    t = np.where(segment == 0, t + 8, (t + 0x108) << np.maximum(segment - 1, 0))
    return np.where(code & 0x80, t, -t).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_ENCODE = _build_alaw_encode()
_ALAW_DECODE = _build_alaw_decode()
_ULAW_ENCODE.flags.writeable = False
_ULAW_DECODE.flags.writeable = False
_ALAW_ENCODE.flags.writeable = False
_ALAW_DECODE.flags.writeable = False


def _pcm(samples: np.ndarray) -> np.ndarray:
    values = np.asarray(samples)
    if values.dtype != np.int16:
        raise AudioError(f"G.711 encodes int16 PCM, got {values.dtype}; convert floats with AudioFrame.from_float32")
    return values.reshape(-1).view(np.uint16)


def _codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise AudioError(f"G.711 codes must be bytes or a uint8 array, got {data.dtype}")
        return data.reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 PCM to G.711 µ-law bytes, one per sample."""
    return _ULAW_ENCODE[_pcm(samples)].tobytes()


def ulaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """G.711 µ-law bytes (or a uint8 array) to int16 PCM."""
    return _ULAW_DECODE[_codes(data)]


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 PCM to G.711 A-law bytes, one per sample."""
    return _ALAW_ENCODE[_pcm(samples)].tobytes()


def alaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """G.711 A-law bytes (or a uint8 array) to int16 PCM."""
    return _ALAW_DECODE[_codes(data)]
