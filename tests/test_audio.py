"""Audio package: real speech files, frames, resampling (batch and streaming), G.711 exactness, bad inputs."""

from __future__ import annotations

import io
import itertools
import logging
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from appliance.audio import (
    ASR_RATE,
    FRAME_MS,
    Audio,
    AudioError,
    AudioFrame,
    StreamResampler,
    alaw_decode,
    alaw_encode,
    join_frames,
    read_audio,
    resample,
    split_frames,
    ulaw_decode,
    ulaw_encode,
    wav_bytes,
    write_wav,
)
from appliance.audio.resample import Quality
from appliance.errors import ApplianceError

SOUNDS = Path("/usr/share/asterisk/sounds/en")
SPEECH = SOUNDS / "hello-world.wav"

needs_speech = pytest.mark.skipif(not SPEECH.exists(), reason="apt-get install asterisk-core-sounds-en-wav")


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def speech_8k() -> np.ndarray:
    if not SPEECH.exists():
        pytest.skip("apt-get install asterisk-core-sounds-en-wav")
    return read_audio(SPEECH, target_rate=None).samples


# ---------------------------------------------------------------- real speech files


@needs_speech
def test_reads_real_speech_at_native_rate() -> None:
    info = sf.info(str(SPEECH))
    audio = read_audio(SPEECH, target_rate=None)
    assert isinstance(audio, Audio)
    assert audio.sample_rate == info.samplerate == 8000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert len(audio.samples) == info.frames
    assert audio.duration == pytest.approx(info.duration)
    assert 0.01 < rms(audio.samples) < 0.5  # it is speech, not silence or noise


@needs_speech
def test_speech_resampled_8k_to_16k_keeps_length_and_energy(speech_8k: np.ndarray) -> None:
    audio = read_audio(SPEECH)  # ASR_RATE by default
    assert audio.sample_rate == ASR_RATE == 16000
    assert len(audio.samples) == 2 * len(speech_8k)
    assert audio.duration == pytest.approx(len(speech_8k) / 8000)
    assert rms(audio.samples) == pytest.approx(rms(speech_8k), rel=0.05)
    assert np.abs(audio.samples).max() < 1.2


@needs_speech
def test_bytes_and_open_files_decode_like_paths() -> None:
    by_path = read_audio(SPEECH)
    by_bytes = read_audio(SPEECH.read_bytes())
    with SPEECH.open("rb") as handle:
        by_handle = read_audio(handle)
    np.testing.assert_array_equal(by_path.samples, by_bytes.samples)
    np.testing.assert_array_equal(by_path.samples, by_handle.samples)


@needs_speech
def test_non_seekable_stream_is_buffered() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            return self._inner.readinto(buffer)

    audio = read_audio(Pipe(SPEECH.read_bytes()))  # type: ignore[arg-type]
    assert len(audio.samples) == 2 * sf.info(str(SPEECH)).frames


def test_stereo_44k1_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left, right = tone(440, 44100, 1.0, 0.5), tone(440, 44100, 1.0, 0.3)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    audio = read_audio(path)
    assert audio.sample_rate == 16000
    assert len(audio.samples) == 16000
    assert peak_hz(audio.samples, 16000) == pytest.approx(440, abs=2)
    assert rms(audio.samples) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)  # mean of the two channels

    opposite = tmp_path / "opposite.wav"
    sf.write(str(opposite), np.stack([left, -left], axis=1), 44100, subtype="PCM_16")
    assert rms(read_audio(opposite).samples) < 1e-4


def test_wrong_rate_file_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "voice-22k.flac"
    sf.write(str(path), tone(1000, 22050, 2.0), 22050, format="FLAC")
    audio = read_audio(path)
    assert audio.sample_rate == 16000
    assert audio.duration == pytest.approx(2.0, abs=1e-3)
    assert peak_hz(audio.samples, 16000) == pytest.approx(1000, abs=2)
    assert read_audio(path, target_rate=8000).sample_rate == 8000


def test_other_formats_decode(tmp_path: Path) -> None:
    signal = tone(300, 16000, 0.5)
    for name, fmt, subtype in [("a.ogg", "OGG", "VORBIS"), ("a.flac", "FLAC", "PCM_16"), ("a.wav", "WAV", "FLOAT")]:
        sf.write(str(tmp_path / name), signal, 16000, format=fmt, subtype=subtype)
        audio = read_audio(tmp_path / name)
        assert audio.sample_rate == 16000
        assert peak_hz(audio.samples, 16000) == pytest.approx(300, abs=3), name


def test_write_wav_round_trips_and_clips(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    signal = np.array([0.0, 0.5, -0.5, 1.5, -1.5, 0.999], dtype=np.float32)
    write_wav(path, signal, 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    pcm, _ = sf.read(str(path), dtype="int16")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32768, 32735]  # clipped, never wrapped
    assert not list(tmp_path.glob(".*.tmp"))

    ints = np.array([1, -2, 32767, -32768], dtype=np.int16)
    data = wav_bytes(ints, 8000)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    decoded, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 8000 and decoded.tolist() == ints.tolist()


def test_write_wav_errors_are_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot write"):
        write_wav(tmp_path / "missing-dir" / "x.wav", np.zeros(10, np.int16), 16000)
    with pytest.raises(AudioError, match="NaN"):
        wav_bytes(np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(AudioError, match="sample_rate"):
        wav_bytes(np.zeros(10, np.int16), 0)


# ---------------------------------------------------------------- bad inputs


def test_text_file_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match=r"not readable audio \(not a recognised audio format\).*WAV, FLAC"):
        read_audio(path)


def test_random_bytes_are_not_audio() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    with pytest.raises(AudioError, match="not readable audio"):
        read_audio(noise)
    with pytest.raises(AudioError, match="not readable audio"):
        read_audio(b"RIFF" + noise)


def test_empty_inputs(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    assert path.stat().st_size == 44  # a valid header with no data
    with pytest.raises(AudioError, match=r"contains no audio \(0 samples\)"):
        read_audio(path)
    with pytest.raises(AudioError, match="empty"):
        read_audio(b"")
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.touch()
    with pytest.raises(AudioError, match="not readable audio"):
        read_audio(zero_bytes)


def test_truncated_wav_mid_data_reads_what_is_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """libsndfile does not fail on a WAV cut mid-data: it decodes the frames present. We log a warning."""
    full = wav_bytes(tone(440, 16000, 1.0), 16000)
    path = tmp_path / "cut.wav"
    path.write_bytes(full[: 44 + 2 * 6000 + 1])  # 6000 whole samples and half of the next
    with caplog.at_level(logging.WARNING, logger="appliance.audio.files"):
        audio = read_audio(path)
    assert len(audio.samples) == 6000
    np.testing.assert_allclose(audio.samples, read_audio(full).samples[:6000])
    assert "looks truncated" in caplog.text


def test_truncated_headers_and_compressed_files_are_errors(tmp_path: Path) -> None:
    full = wav_bytes(tone(440, 16000, 1.0), 16000)
    with pytest.raises(AudioError, match="not readable audio"):
        read_audio(full[:30])  # cut inside the header: no data chunk
    flac = io.BytesIO()
    sf.write(flac, tone(440, 16000, 3.0), 16000, format="FLAC")
    data = flac.getvalue()
    with pytest.raises(AudioError, match="corrupt or truncated"):
        read_audio(data[: len(data) // 2])  # FLAC cut mid-stream fails while decoding
    ogg = io.BytesIO()
    sf.write(ogg, tone(440, 16000, 3.0), 16000, format="OGG", subtype="VORBIS")
    with pytest.raises(AudioError, match="not readable audio"):
        read_audio(ogg.getvalue()[:200])


def test_float_wav_with_nan_or_inf(tmp_path: Path) -> None:
    signal = tone(440, 16000, 0.5)
    signal[100], signal[200] = np.nan, np.inf
    path = tmp_path / "nan.wav"
    sf.write(str(path), signal, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 NaN or infinite sample"):
        read_audio(path)
    with pytest.raises(AudioError, match="NaN"):
        read_audio(path, target_rate=None)


def test_too_long_is_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ten-minutes.wav"
    write_wav(path, np.zeros(600 * 8000, np.int16), 8000)

    def no_decoding(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded the whole file before checking its length")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(AudioError, match=r"is 600\.0 s long, over the 60 s limit; trim it"):
        read_audio(path, max_seconds=60)


def test_within_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_wav(path, tone(200, 8000, 2.0), 8000)
    assert read_audio(path, max_seconds=2.0).duration == pytest.approx(2.0)
    with pytest.raises(AudioError, match="over the 1.5 s limit"):
        read_audio(path, max_seconds=1.5)


def test_unreadable_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a directory"):
        read_audio(tmp_path)
    locked = tmp_path / "locked.wav"
    write_wav(locked, np.zeros(100, np.int16), 8000)

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root ignores chmod 000, so simulate it
    with pytest.raises(AudioError, match="Permission denied; check its permissions"):
        read_audio(locked)


def test_bad_arguments() -> None:
    with pytest.raises(AudioError, match="target_rate"):
        read_audio(b"x", target_rate=0)
    with pytest.raises(AudioError, match="max_seconds"):
        read_audio(b"x", max_seconds=-1)
    with pytest.raises(AudioError, match="binary mode"):
        read_audio(io.StringIO("text"))  # type: ignore[arg-type]
    assert issubclass(AudioError, ApplianceError)


# ---------------------------------------------------------------- frames


def test_frame_basics_and_validation() -> None:
    frame = AudioFrame(np.zeros(320, np.int16), 16000, timestamp=1.5)
    assert (frame.samples, frame.duration, frame.end) == (320, 0.02, 1.52)
    assert not frame.pcm.flags.writeable
    with pytest.raises(AudioError, match="int16"):
        AudioFrame(np.zeros(320, np.float32), 16000)
    with pytest.raises(AudioError, match=r"shape \(samples,\)"):
        AudioFrame(np.zeros((320, 2), np.int16), 16000)
    with pytest.raises(AudioError, match=r"shape \(samples, 2\)"):
        AudioFrame(np.zeros(320, np.int16), 16000, channels=2)
    with pytest.raises(AudioError, match="positive"):
        AudioFrame(np.zeros(320, np.int16), 0)
    with pytest.raises(AudioError, match="finite"):
        AudioFrame(np.zeros(320, np.int16), 16000, timestamp=float("nan"))


def test_frame_float_and_bytes_conversions() -> None:
    frame = AudioFrame.from_float32(np.array([0.0, 0.5, -1.0, 2.0, -2.0], np.float32), 8000, timestamp=0.25)
    assert frame.pcm.tolist() == [0, 16384, -32768, 32767, -32768]
    assert frame.timestamp == 0.25
    assert frame.to_bytes() == np.array([0, 16384, -32768, 32767, -32768], "<i2").tobytes()
    assert AudioFrame.from_bytes(frame.to_bytes(), 8000, timestamp=0.25) == frame
    floats = frame.to_float32()
    assert floats.dtype == np.float32 and floats.min() >= -1.0 and floats.max() < 1.0

    stereo = AudioFrame(np.array([[1000, 3000], [-32768, -32768], [32767, 32767]], np.int16), 16000, channels=2)
    np.testing.assert_allclose(stereo.to_float32(), [2000 / 32768, -1.0, 32767 / 32768], rtol=1e-6)
    assert stereo.to_bytes()[:4] == np.array([1000, 3000], "<i2").tobytes()  # interleaved
    assert AudioFrame.from_bytes(stereo.to_bytes(), 16000, channels=2) == stereo
    with pytest.raises(AudioError, match="misaligned"):
        AudioFrame.from_bytes(b"\x00\x01\x02", 16000)
    with pytest.raises(AudioError, match="NaN"):
        AudioFrame.from_float32(np.array([np.nan], np.float32), 16000)


@needs_speech
def test_split_frames_timestamps_and_padding(speech_8k: np.ndarray) -> None:
    frames = list(split_frames(speech_8k, 8000, start=10.0))
    length = 8000 * FRAME_MS // 1000
    assert len(frames) == -(-len(speech_8k) // length)
    assert all(f.samples == length and f.sample_rate == 8000 for f in frames)
    for index, frame in enumerate(frames):
        assert frame.timestamp == pytest.approx(10.0 + index * 0.02, abs=1e-9)
    joined = join_frames(frames)
    assert joined.dtype == np.int16 and len(joined) == len(frames) * length
    remainder = len(speech_8k) % length
    assert not joined[len(speech_8k) :].any() and remainder  # the last frame is zero-padded
    np.testing.assert_array_equal(joined[: len(speech_8k)], AudioFrame.from_float32(speech_8k, 8000).pcm)

    unpadded = list(split_frames(speech_8k, 8000, pad_last=False))
    assert unpadded[-1].samples == remainder
    assert len(join_frames(unpadded)) == len(speech_8k)


def test_split_frames_edge_cases() -> None:
    assert list(split_frames(np.zeros(0, np.int16), 16000)) == []
    ints = np.arange(480, dtype=np.int16)
    frames = list(split_frames(ints, 16000, frame_ms=10))
    assert [f.timestamp for f in frames] == [0.0, 0.01, 0.02]
    np.testing.assert_array_equal(join_frames(frames), ints)
    with pytest.raises(AudioError, match="not a whole number"):
        list(split_frames(ints, 11025, frame_ms=20))
    with pytest.raises(AudioError, match="mono"):
        list(split_frames(np.zeros((10, 2), np.int16), 16000))
    with pytest.raises(AudioError, match="different sample rates"):
        join_frames([AudioFrame(ints, 16000), AudioFrame(ints, 8000)])
    assert join_frames([]).dtype == np.int16


# ---------------------------------------------------------------- resampling


def test_resample_keeps_dtype_and_identity() -> None:
    signal = tone(440, 8000, 0.5)
    assert resample(signal, 8000, 8000) is signal
    up = resample(signal, 8000, 16000)
    assert up.dtype == np.float32 and len(up) == 2 * len(signal)
    ints = AudioFrame.from_float32(signal, 8000).pcm
    up_ints = resample(ints, 8000, 16000, quality="QQ")
    assert up_ints.dtype == np.int16 and len(up_ints) == 2 * len(ints)
    assert resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)
    assert resample(np.zeros((441, 2), np.float32), 44100, 16000).shape == (160, 2)
    with pytest.raises(AudioError, match="int8"):
        resample(np.zeros(10, np.int8), 8000, 16000)
    with pytest.raises(AudioError, match="quality"):
        resample(signal, 8000, 16000, quality="best")  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="to_rate"):
        resample(signal, 8000, 0)


@needs_speech
@pytest.mark.parametrize("quality", ["HQ", "LQ", "QQ"])
def test_stream_resampling_equals_batch(speech_8k: np.ndarray, quality: Quality) -> None:
    resampler = StreamResampler(8000, 16000, quality=quality)
    frames = list(split_frames(speech_8k, 8000, start=3.0, pad_last=False))
    out = [o for frame in frames if (o := resampler.process(frame)) is not None]
    tail = resampler.flush()
    if tail is not None:
        out.append(tail)
    streamed = join_frames(out)

    pcm = AudioFrame.from_float32(speech_8k, 8000).pcm
    batch_int16 = resample(pcm, 8000, 16000, quality=quality)
    batch_float = AudioFrame.from_float32(resample(AudioFrame(pcm, 8000).to_float32(), 8000, 16000, quality), 16000)
    assert len(streamed) == len(batch_int16) == 2 * len(pcm)
    np.testing.assert_array_equal(streamed, batch_float.pcm)
    assert np.abs(streamed.astype(np.int32) - batch_int16).max() <= 2

    assert out[0].timestamp == 3.0 and all(f.sample_rate == 16000 for f in out)
    for previous, frame in itertools.pairwise(out):
        assert frame.timestamp == pytest.approx(previous.end, abs=1e-9)
    assert out[-1].end == pytest.approx(3.0 + len(pcm) / 8000, abs=1e-9)


def test_stream_resampler_latency_reuse_and_errors() -> None:
    signal = tone(440, 48000, 0.2)
    low = StreamResampler(48000, 16000, quality="QQ")
    first = low.process(next(split_frames(signal, 48000)))
    assert first is not None and first.samples > 0  # QQ has no look-ahead

    stereo = StreamResampler(48000, 16000, channels=2)
    frames = [
        AudioFrame.from_float32(np.stack([f.to_float32()] * 2, axis=1), 48000, f.timestamp)
        for f in split_frames(signal, 48000)
    ]
    for _ in range(2):  # flush resets, so the same resampler serves a second stream identically
        out = [o for frame in frames if (o := stereo.process(frame)) is not None]
        out.append(stereo.flush())  # type: ignore[arg-type]
        assert sum(f.samples for f in out) == len(signal) // 3
        assert out[0].timestamp == 0.0 and out[0].channels == 2
    assert stereo.flush() is None

    same = StreamResampler(16000, 16000)
    frame = AudioFrame(np.arange(320, dtype=np.int16), 16000, timestamp=0.5)
    assert same.process(frame) == frame and same.flush() is None
    with pytest.raises(AudioError, match="expects 48000 Hz frames, got 16000 Hz"):
        low.process(frame)
    with pytest.raises(AudioError, match="2-channel"):
        stereo.process(AudioFrame(np.zeros(960, np.int16), 48000))


# ---------------------------------------------------------------- G.711


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_bit_exact_with_audioop(audioop: ModuleType) -> None:
    assert ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)
    assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_bit_exact_with_audioop(audioop: ModuleType) -> None:
    assert alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM.tobytes(), 2)
    assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


@needs_speech
def test_g711_round_trip_on_speech(speech_8k: np.ndarray) -> None:
    pcm = AudioFrame.from_float32(speech_8k, 8000).pcm
    for encode, decode in [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]:
        codes = encode(pcm)
        assert isinstance(codes, bytes) and len(codes) == len(pcm)
        decoded = decode(codes)
        assert decoded.dtype == np.int16
        np.testing.assert_array_equal(encode(decoded), codes)  # decoded values are fixed points
        snr = 10 * np.log10(np.sum(pcm.astype(float) ** 2) / np.sum((pcm.astype(float) - decoded) ** 2))
        assert snr > 30  # G.711 gives ~38 dB on speech
        np.testing.assert_array_equal(decode(np.frombuffer(codes, np.uint8)), decoded)


def test_g711_rejects_wrong_dtypes() -> None:
    with pytest.raises(AudioError, match="int16"):
        ulaw_encode(np.zeros(4, np.float32))
    with pytest.raises(AudioError, match="uint8"):
        alaw_decode(np.zeros(4, np.int16))


def test_pcm_queue_wakes_every_waiter_when_a_thread_takes_the_last_speech_or_it_is_flushed() -> None:
    import asyncio
    import threading

    from appliance.audio.queue import PcmQueue

    async def main() -> None:
        queue = PcmQueue()
        await asyncio.wait_for(queue.emptied(), 1)  # nothing queued: at once
        queue.push(np.full(480, 0.5, np.float32))
        waiters = [asyncio.create_task(queue.emptied()) for _ in range(3)]
        await asyncio.sleep(0.05)
        threading.Thread(target=queue.take, args=(320,)).start()  # part of it: still queued
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        threading.Thread(target=queue.take, args=(320,)).start()  # the rest, from another thread
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        queue.push(np.full(480, 0.5, np.float32))
        flushed = asyncio.create_task(queue.emptied())
        await asyncio.sleep(0.05)
        cancelled = asyncio.create_task(queue.emptied())
        await asyncio.sleep(0.01)
        cancelled.cancel()
        queue.flush()  # barge-in
        await asyncio.wait_for(flushed, 1)

    asyncio.run(main())
