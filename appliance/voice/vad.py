"""Voice activity detection behind one interface: Silero (ONNX/TFLite through the runtime layer) or WebRTC VAD.

Both take 16 kHz mono float32 audio in pieces of any length and report the latest speech probability.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from appliance.audio.frame import ASR_RATE
from appliance.errors import ApplianceError
from appliance.runtime.base import TensorSession

SAMPLE_RATE = ASR_RATE


class Vad(Protocol):
    """Streaming VAD: feed audio, read the probability that the most recent window is speech."""

    window: int  # samples per decision

    def push(self, samples: np.ndarray) -> list[float]:
        """Feed 16 kHz float32 samples; one probability per completed window, in order."""
        ...

    def reset(self) -> None: ...


class _Windows:
    """Cuts a stream of samples into fixed windows, keeping the remainder for the next push."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending = np.zeros(0, np.float32)

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def cut(self, samples: np.ndarray) -> list[np.ndarray]:
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        count = len(self._pending) // self.size
        windows = [self._pending[i * self.size : (i + 1) * self.size] for i in range(count)]
        self._pending = self._pending[count * self.size :]
        return windows


class SileroVad:
    """Silero VAD v6: 512-sample windows with 64 samples of context, LSTM state carried between calls."""

    window = 512
    context = 64

    def __init__(self, session: TensorSession) -> None:
        self._session = session
        self._windows = _Windows(self.window)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(self.context, np.float32)
        self._windows.reset()

    def push(self, samples: np.ndarray) -> list[float]:
        probs = []
        for chunk in self._windows.cut(samples):
            out = self._session.run({"input": np.concatenate([self._context, chunk])[None], "h": self._h, "c": self._c})
            self._h, self._c, self._context = out["hn"], out["cn"], chunk[-self.context :]
            probs.append(float(out["speech_probs"].reshape(-1)[0]))
        return probs


class WebRtcVad:
    """Google's WebRTC VAD (GMM, no model file): 20 ms frames, speech is 1.0 and silence 0.0."""

    window = 320

    def __init__(self, aggressiveness: int = 2) -> None:
        if importlib.util.find_spec("webrtcvad") is None:
            raise ApplianceError("webrtcvad is not installed; fix: pip install webrtcvad-wheels")
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self._windows = _Windows(self.window)

    def reset(self) -> None:
        self._windows.reset()

    def push(self, samples: np.ndarray) -> list[float]:
        probs = []
        for chunk in self._windows.cut(samples):
            pcm = (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
            probs.append(1.0 if self._vad.is_speech(pcm, SAMPLE_RATE) else 0.0)
        return probs
