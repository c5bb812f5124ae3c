"""The WebRTC media path without a network: our paced track's frames through aiortc's real Opus, PCMU and G.722
encoders and decoders into `InboundAudio`, as the voice core receives them. Speech must keep its level: a mono
frame handed to aiortc's Opus encoder used to be upmixed at -3 dB, enough to flip Whisper's translation of the
Spanish `agent-alreadyon` prompt ("agent" → "agency") in test_webrtc's interpretation test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from appliance.audio import read_audio
from appliance.audio.frame import float_to_int16
from appliance.webrtc.media import InboundAudio, PacedTrack

ES = Path("/usr/share/asterisk/sounds/es")
CODECS = {
    "opus": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2),
    "pcmu": RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, channels=1),
    "g722": RTCRtpCodecParameters(mimeType="audio/G722", clockRate=8000, channels=1),
}


class FileTrack(PacedTrack):
    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__(48000)
        self.pcm, self.at = pcm, 0

    def next_samples(self, n: int) -> np.ndarray:
        chunk = np.zeros(n, np.int16)
        part = self.pcm[self.at:self.at + n]
        chunk[:len(part)] = part
        self.at += n
        return chunk


async def through(codec: str, audio_48k: np.ndarray) -> np.ndarray:
    """What InboundAudio hands the voice core after ``audio_48k`` went out on a paced track over ``codec``."""
    track = FileTrack(float_to_int16(audio_48k))
    track._start = -1e9  # never wait for the wall clock: frames as fast as they are asked for
    encoder, decoder = get_encoder(CODECS[codec]), get_decoder(CODECS[codec])
    inbound, out = InboundAudio(), []
    while track.at < len(audio_48k) + 48000 // 2:
        payloads, _ = encoder.encode(await track.recv())
        for payload in payloads:
            for frame in decoder.decode(JitterFrame(data=payload, timestamp=0)):
                samples = inbound.convert(frame)
                if samples is not None:
                    out.append(samples)
    return np.concatenate(out)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_speech_keeps_its_level_through_each_codec(codec: str) -> None:
    sent = read_audio(ES / "agent-alreadyon.wav", 48000).samples
    heard = asyncio.run(through(codec, sent))
    reference = read_audio(ES / "agent-alreadyon.wav", 16000).samples
    # Measured: Opus 0.0 dB, PCMU/G.722 within 0.1 dB; a mono frame upmixed by aiortc lost 3.0 dB.
    assert abs(rms_db(heard) - rms_db(reference) - 10 * np.log10(len(reference) / len(heard))) < 0.5
