"""PCM audio frames: the int16 unit that flows through the voice pipeline, and splitting/joining them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from appliance.audio.errors import AudioError

FRAME_MS = 20
"""Default frame length in milliseconds."""

ASR_RATE = 16000
"""Sample rate speech recognition and VAD models expect."""

_INT16_SCALE = 32768.0


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) to int16: scaled by 32768, rounded, clipped. Non-finite samples raise AudioError."""
    values = np.asarray(samples)
    if values.dtype == np.int16:
        return values
    if not np.issubdtype(values.dtype, np.floating):
        raise AudioError(f"expected float32 or int16 samples, got {values.dtype}")
    if values.size and not np.isfinite(values).all():
        raise AudioError("samples contain NaN or infinite values; the audio is corrupt")
    scaled = np.rint(values.astype(np.float64, copy=False) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def int16_to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples to float32 in [-1, 1)."""
    return (np.asarray(samples, dtype=np.int16).astype(np.float32)) / np.float32(_INT16_SCALE)


@dataclass(frozen=True, slots=True, eq=False)
class AudioFrame:
    """A block of int16 PCM: shape (samples,) when mono, (samples, channels) otherwise; read-only."""

    pcm: np.ndarray
    sample_rate: int
    channels: int = 1
    timestamp: float = 0.0
    """Seconds from the start of the stream to the first sample of this frame."""

    def __post_init__(self) -> None:
        pcm = self.pcm
        if not isinstance(pcm, np.ndarray):
            raise AudioError(f"AudioFrame.pcm must be a numpy array, got {type(pcm).__name__}")
        if pcm.dtype != np.int16:
            raise AudioError(f"AudioFrame.pcm must be int16, got {pcm.dtype}; use AudioFrame.from_float32 for floats")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 1:
            raise AudioError(f"AudioFrame.channels must be a positive integer, got {self.channels!r}")
        if self.channels == 1 and pcm.ndim != 1:
            raise AudioError(f"a mono AudioFrame needs pcm of shape (samples,), got {pcm.shape}")
        if self.channels > 1 and (pcm.ndim != 2 or pcm.shape[1] != self.channels):
            raise AudioError(
                f"an AudioFrame with {self.channels} channels needs pcm of shape (samples, {self.channels}), "
                f"got {pcm.shape}"
            )
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int | np.integer):
            raise AudioError(f"AudioFrame.sample_rate must be an integer, got {self.sample_rate!r}")
        if self.sample_rate <= 0:
            raise AudioError(f"AudioFrame.sample_rate must be positive, got {self.sample_rate}")
        if not math.isfinite(self.timestamp):
            raise AudioError(f"AudioFrame.timestamp must be finite, got {self.timestamp}")
        view = pcm.view()
        view.flags.writeable = False
        object.__setattr__(self, "pcm", view)
        object.__setattr__(self, "sample_rate", int(self.sample_rate))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AudioFrame):
            return NotImplemented
        return (
            self.sample_rate == other.sample_rate
            and self.channels == other.channels
            and self.timestamp == other.timestamp
            and np.array_equal(self.pcm, other.pcm)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def samples(self) -> int:
        """Samples per channel."""
        return int(self.pcm.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.samples / self.sample_rate

    @property
    def end(self) -> float:
        """Stream time just after the last sample."""
        return self.timestamp + self.duration

    def to_float32(self) -> np.ndarray:
        """Mono float32 in [-1, 1), channels averaged."""
        audio = int16_to_float32(self.pcm)
        if self.channels > 1:
            audio = audio.mean(axis=1, dtype=np.float32)
        return audio

    @classmethod
    def from_float32(cls, samples: np.ndarray, sample_rate: int, timestamp: float = 0.0) -> AudioFrame:
        """A frame from float samples in [-1, 1): (samples,) or (samples, channels); out-of-range values clip."""
        values = np.asarray(samples)
        if values.ndim not in (1, 2):
            raise AudioError(f"expected samples of shape (samples,) or (samples, channels), got {values.shape}")
        channels = 1 if values.ndim == 1 else int(values.shape[1])
        return cls(float_to_int16(values), sample_rate, channels, timestamp)

    def to_bytes(self) -> bytes:
        """Interleaved little-endian signed 16-bit PCM."""
        return self.pcm.astype("<i2", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, sample_rate: int, channels: int = 1, timestamp: float = 0.0) -> AudioFrame:
        """A frame from interleaved little-endian signed 16-bit PCM."""
        if channels < 1:
            raise AudioError(f"channels must be a positive integer, got {channels}")
        if len(data) % (2 * channels):
            raise AudioError(
                f"{len(data)} bytes is not a whole number of {channels}-channel 16-bit samples "
                f"({2 * channels} bytes each); the PCM stream is truncated or misaligned"
            )
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
        if channels > 1:
            pcm = pcm.reshape(-1, channels)
        return cls(pcm, sample_rate, channels, timestamp)


def frame_length(sample_rate: int, frame_ms: float = FRAME_MS) -> int:
    """Samples in one frame; AudioError when frame_ms is not a whole number of samples at this rate."""
    if sample_rate <= 0 or frame_ms <= 0:
        raise AudioError(f"sample rate and frame length must be positive, got {sample_rate} Hz and {frame_ms} ms")
    exact = sample_rate * frame_ms / 1000
    length = round(exact)
    if length < 1 or abs(exact - length) > 1e-9:
        raise AudioError(
            f"{frame_ms} ms at {sample_rate} Hz is {exact:g} samples, not a whole number; choose a frame length "
            "that divides the sample rate evenly (10, 20 or 30 ms work for 8, 16, 32, 48 kHz)"
        )
    return length


def split_frames(
    samples: np.ndarray,
    sample_rate: int,
    frame_ms: float = FRAME_MS,
    start: float = 0.0,
    pad_last: bool = True,
) -> Iterator[AudioFrame]:
    """Mono float32 or int16 samples as consecutive frames; the last is zero-padded, or shorter if not pad_last."""
    values = np.asarray(samples)
    if values.ndim != 1:
        raise AudioError(f"split_frames needs mono samples of shape (samples,), got {values.shape}")
    pcm = float_to_int16(values)
    length = frame_length(sample_rate, frame_ms)
    for index, offset in enumerate(range(0, len(pcm), length)):
        chunk = pcm[offset : offset + length]
        if pad_last and len(chunk) < length:
            chunk = np.concatenate([chunk, np.zeros(length - len(chunk), dtype=np.int16)])
        yield AudioFrame(chunk, sample_rate, 1, start + index * length / sample_rate)


def join_frames(frames: Iterable[AudioFrame]) -> np.ndarray:
    """The frames' samples concatenated in order as int16 mono (multi-channel frames are averaged)."""
    parts: list[np.ndarray] = []
    rate: int | None = None
    for frame in frames:
        if rate is None:
            rate = frame.sample_rate
        elif frame.sample_rate != rate:
            raise AudioError(
                f"cannot join frames of different sample rates ({rate} Hz and {frame.sample_rate} Hz); resample first"
            )
        parts.append(frame.pcm if frame.channels == 1 else float_to_int16(frame.to_float32()))
    if not parts:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(parts)
