"""Sample-rate conversion with soxr: whole signals at once, or a live stream frame by frame."""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr

from appliance.audio.errors import AudioError
from appliance.audio.frame import AudioFrame, float_to_int16, int16_to_float32

Quality = Literal["VHQ", "HQ", "MQ", "LQ", "QQ"]
"""soxr quality: 'HQ' for files; 'QQ' (no look-ahead) or 'LQ' when latency matters more than fidelity."""

_QUALITIES = ("VHQ", "HQ", "MQ", "LQ", "QQ")
_DTYPES = (np.float32, np.float64, np.int16, np.int32)


def _check_rates(from_rate: int, to_rate: int, quality: str) -> None:
    for name, rate in (("from_rate", from_rate), ("to_rate", to_rate)):
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
            raise AudioError(f"{name} must be a positive integer sample rate in Hz, got {rate!r}")
    if quality not in _QUALITIES:
        raise AudioError(f"unknown resampling quality {quality!r}; choose one of {', '.join(_QUALITIES)}")


def resample(samples: np.ndarray, from_rate: int, to_rate: int, quality: Quality = "HQ") -> np.ndarray:
    """Samples (n,) or (n, channels) at from_rate, resampled to to_rate in the same dtype; unchanged if rates match."""
    _check_rates(from_rate, to_rate, quality)
    values = np.asarray(samples)
    if values.dtype not in _DTYPES:
        raise AudioError(f"cannot resample {values.dtype} samples; convert them to float32 or int16 first")
    if values.ndim not in (1, 2):
        raise AudioError(f"expected samples of shape (samples,) or (samples, channels), got {values.shape}")
    if from_rate == to_rate:
        return values
    if values.shape[0] == 0:
        return np.zeros((0, *values.shape[1:]), dtype=values.dtype)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise AudioError("samples contain NaN or infinite values; the audio is corrupt")
    result: np.ndarray = soxr.resample(np.ascontiguousarray(values), from_rate, to_rate, quality=quality)
    return result


class StreamResampler:
    """Resamples a stream of AudioFrames; output equals resampling the whole stream at once (as float, then int16).

    Output timestamps are stream time: the first input frame's timestamp plus the output samples already emitted
    divided by to_rate. soxr buffers some input (less with 'QQ'/'LQ'), so early calls may return None; call
    flush() at the end of the stream to get the rest, after which the resampler can start a new stream.
    """

    def __init__(self, from_rate: int, to_rate: int, channels: int = 1, quality: Quality = "HQ") -> None:
        _check_rates(from_rate, to_rate, quality)
        if channels < 1:
            raise AudioError(f"channels must be a positive integer, got {channels}")
        self.from_rate = int(from_rate)
        self.to_rate = int(to_rate)
        self.channels = channels
        self.quality = quality
        self._stream = soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32", quality=quality)
        self._start: float | None = None
        self._emitted = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        """Feed one frame; returns the resampled audio that is ready, or None while soxr is still buffering."""
        if frame.sample_rate != self.from_rate:
            raise AudioError(
                f"this resampler expects {self.from_rate} Hz frames, got {frame.sample_rate} Hz; "
                "use one StreamResampler per input rate"
            )
        if frame.channels != self.channels:
            raise AudioError(f"this resampler expects {self.channels}-channel frames, got {frame.channels}")
        if self._start is None:
            self._start = frame.timestamp
        if self.from_rate == self.to_rate:
            return self._emit(np.array(frame.pcm))
        out = self._stream.resample_chunk(int16_to_float32(frame.pcm))
        return self._emit(float_to_int16(out))

    def flush(self) -> AudioFrame | None:
        """End the stream: returns the buffered tail (or None) and resets for a new stream."""
        if self._start is None:
            return None
        tail = None
        if self.from_rate != self.to_rate:
            empty = np.zeros((0, self.channels) if self.channels > 1 else 0, dtype=np.float32)
            tail = self._emit(float_to_int16(self._stream.resample_chunk(empty, last=True)))
            self._stream.clear()
        self._start = None
        self._emitted = 0
        return tail

    def _emit(self, pcm: np.ndarray) -> AudioFrame | None:
        if pcm.shape[0] == 0:
            return None
        assert self._start is not None
        if self.channels == 1:
            pcm = pcm.reshape(-1)
        frame = AudioFrame(pcm, self.to_rate, self.channels, self._start + self._emitted / self.to_rate)
        self._emitted += pcm.shape[0]
        return frame
