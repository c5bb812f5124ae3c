"""Reading audio files of any common format into mono float32 at the rate a model wants, and writing WAVs."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from appliance.audio.errors import AudioError
from appliance.audio.frame import ASR_RATE, float_to_int16
from appliance.audio.resample import resample

log = logging.getLogger(__name__)

SUPPORTED = "WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF, AU, CAF, W64, RF64"

AudioSource = Path | str | bytes | BinaryIO


@dataclass
class Audio:
    """Decoded audio: float32 mono samples in [-1, 1] at sample_rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def read_audio(source: AudioSource, target_rate: int | None = ASR_RATE, max_seconds: float | None = None) -> Audio:
    """Decode a file, its bytes or an open binary file; downmix to mono; resample to target_rate (None: keep)."""
    if target_rate is not None and (isinstance(target_rate, bool) or target_rate <= 0):
        raise AudioError(f"target_rate must be a positive sample rate in Hz or None, got {target_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise AudioError(f"max_seconds must be positive or None, got {max_seconds!r}")
    name, opened, owned = _open_source(source)
    try:
        data, rate = _decode(opened, name, max_seconds)
    finally:
        if owned:
            opened.close()
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if target_rate is not None and rate != target_rate:
        mono = resample(mono, rate, target_rate)
        rate = target_rate
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), rate)


def _open_source(source: AudioSource) -> tuple[str, BinaryIO, bool]:
    """(name for messages, seekable binary file, whether we must close it)."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioError("the audio data is empty (0 bytes); send the file's contents")
        return "the audio data", io.BytesIO(bytes(source)), True
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"audio file {path} does not exist; check the path")
        if path.is_dir():
            raise AudioError(f"{path} is a directory, not an audio file")
        try:
            handle: BinaryIO = path.open("rb")
        except OSError as error:
            reason = error.strerror or error
            raise AudioError(f"cannot read audio file {path}: {reason}; check its permissions") from None
        return str(path), handle, True
    if not hasattr(source, "read"):
        raise AudioError(f"expected a path, bytes or a binary file, got {type(source).__name__}")
    name = str(getattr(source, "name", "the audio stream"))
    if isinstance(source, io.TextIOBase):
        raise AudioError(f"{name} is a text stream; open the file in binary mode ('rb')")
    try:
        seekable = source.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        return name, source, False
    try:
        data = source.read()
    except (OSError, ValueError) as error:
        raise AudioError(f"cannot read {name}: {error}") from None
    if not isinstance(data, bytes | bytearray):
        raise AudioError(f"{name} is a text stream; open the file in binary mode ('rb')")
    if not data:
        raise AudioError(f"{name} is empty (0 bytes)")
    return name, io.BytesIO(data), True


def _describe(error: Exception) -> str:
    code = getattr(error, "code", None)
    if code == 1:
        return "not a recognised audio format"
    if code == 3:
        return "the file is malformed or truncated"
    if code == 4:
        return "it uses an encoding this build of libsndfile cannot decode"
    text = str(getattr(error, "error_string", "") or "").strip()
    return text or "libsndfile could not decode it"


def _decode(handle: BinaryIO, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples as float32 of shape (frames, channels), sample rate), with every failure as AudioError."""
    try:
        sound = sf.SoundFile(handle)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as error:
        raise AudioError(f"{name} is not readable audio ({_describe(error)}); supported formats: {SUPPORTED}") from None
    with sound:
        rate, frames = int(sound.samplerate), int(sound.frames)
        if rate <= 0 or sound.channels <= 0:
            raise AudioError(f"{name} has an invalid header ({rate} Hz, {sound.channels} channels)")
        limit = -1
        if max_seconds is not None:
            limit = int(max_seconds * rate)
            if frames > limit:
                raise _too_long(name, frames / rate, max_seconds)
        _warn_if_truncated(sound, name)
        try:
            data = sound.read(frames=limit + 1 if limit >= 0 else -1, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, ValueError, MemoryError) as error:
            reason = _describe(error)
            raise AudioError(f"{name} is corrupt or truncated ({reason}); re-export or re-upload it") from None
    if max_seconds is not None and len(data) > limit:
        raise _too_long(name, len(data) / rate, max_seconds, at_least=True)
    if len(data) == 0:
        raise AudioError(f"{name} contains no audio (0 samples); record or export it again")
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise AudioError(
            f"{name} contains {bad} NaN or infinite sample(s); the file is corrupt or was written by a broken encoder"
        )
    return data, rate


def _too_long(name: str, duration: float, limit: float, at_least: bool = False) -> AudioError:
    length = f"at least {duration:.1f} s" if at_least else f"{duration:.1f} s"
    return AudioError(f"{name} is {length} long, over the {limit:g} s limit; trim it or split it into shorter parts")


def _warn_if_truncated(sound: sf.SoundFile, name: str) -> None:
    """libsndfile silently reads a WAV cut short up to where it ends; its header log shows the shortfall."""
    try:
        info = sound.extra_info
    except (sf.SoundFileError, RuntimeError, AttributeError):
        return
    for line in info.splitlines():
        if line.startswith("data") and "should be" in line:
            log.warning("%s looks truncated (%s); decoding the %d frames present", name, line.strip(), sound.frames)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete 16-bit PCM WAV file in memory; samples (n,) or (n, channels), float32 in [-1, 1) or int16."""
    pcm = _to_pcm(samples, sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_wav(path: Path | str, samples: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit PCM WAV atomically (temp file then rename); floats are clipped to int16, not wrapped."""
    data = wav_bytes(samples, sample_rate)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise AudioError(f"cannot write {target}: {error.strerror or error}") from None


def _to_pcm(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    values = np.asarray(samples)
    if values.ndim not in (1, 2):
        raise AudioError(f"expected samples of shape (samples,) or (samples, channels), got {values.shape}")
    return float_to_int16(values)
