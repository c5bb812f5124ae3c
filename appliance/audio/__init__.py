"""Audio: PCM frames, resampling, file I/O and G.711 codecs."""

from appliance.audio.errors import AudioError
from appliance.audio.files import Audio, read_audio, wav_bytes, write_wav
from appliance.audio.frame import ASR_RATE, FRAME_MS, AudioFrame, join_frames, split_frames
from appliance.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from appliance.audio.resample import StreamResampler, resample

__all__ = [
    "ASR_RATE",
    "FRAME_MS",
    "Audio",
    "AudioError",
    "AudioFrame",
    "StreamResampler",
    "alaw_decode",
    "alaw_encode",
    "join_frames",
    "read_audio",
    "resample",
    "split_frames",
    "ulaw_decode",
    "ulaw_encode",
    "wav_bytes",
    "write_wav",
]
