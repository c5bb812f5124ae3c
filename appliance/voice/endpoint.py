"""Endpointing: turn VAD probabilities into speech start, pause, resume and end events.

The pause event comes at the first silent window, before the hangover has passed, so that a final ASR
pass can start speculatively while the endpointer waits to be sure; a resume discards it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.voice.vad import SAMPLE_RATE, Vad


@dataclass
class EndpointOptions:
    """Tunables of the endpointer. Times are in milliseconds of audio."""

    threshold: float = 0.5  # a window at or above this is speech
    neg_threshold: float = 0.35  # a window below this is silence (hysteresis in between)
    min_speech_ms: int = 64  # speech must last this long to start a turn (rejects clicks)
    hangover_ms: int = 200  # silence after speech that ends the turn
    pre_roll_ms: int = 320  # audio kept from before the detected start
    max_utterance_s: float = 25.0  # a turn longer than this is ended (Whisper sees 30 s at most)
    rejoin_ms: int = 300  # speech that starts again this soon after a turn ended continues that turn (0: never)


@dataclass(frozen=True)
class SpeechStarted:
    time: float  # stream time (s) where the speech began


@dataclass(frozen=True)
class SpeechPaused:
    time: float  # stream time of the first silent window
    audio: np.ndarray  # the utterance so far (with pre-roll), 16 kHz float32


@dataclass(frozen=True)
class SpeechResumed:
    time: float


@dataclass(frozen=True)
class SpeechEnded:
    time: float  # stream time at which the hangover ran out
    audio: np.ndarray  # the whole utterance, with pre-roll and trailing silence
    forced: bool = False  # ended by max_utterance_s, not by silence


EndpointEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechEnded


class Endpointer:
    """Feed 16 kHz float32 audio; get events. Pure computation around a VAD: no clocks, no I/O."""

    def __init__(self, vad: Vad, options: EndpointOptions | None = None) -> None:
        self.vad = vad
        self.options = options or EndpointOptions()
        self._samples = 0  # stream position after the last push
        self._windows_done = 0
        self._chunks: list[np.ndarray] = []
        self._buffered = 0
        self._state = "silence"
        self._run = 0  # samples of consecutive speech (in silence) or silence (in a pause)
        self._start_sample = 0
        self.probability = 0.0  # the VAD's speech probability of the last whole window

    @property
    def in_speech(self) -> bool:
        return self._state != "silence"

    @property
    def position(self) -> float:
        """Stream time (s) after the last sample pushed."""
        return self._samples / SAMPLE_RATE

    def utterance(self) -> np.ndarray:
        """The current turn's audio so far (empty in silence)."""
        return self._audio() if self.in_speech else np.zeros(0, np.float32)

    def process(self, samples: np.ndarray) -> list[EndpointEvent]:
        events: list[EndpointEvent] = []
        probs = self.vad.push(samples)
        self._chunks.append(samples.astype(np.float32, copy=False))
        self._buffered += len(samples)
        self._samples += len(samples)
        window = self.vad.window
        for p in probs:  # each probability is for the next whole window of the stream
            self._windows_done += 1
            self.probability = float(p)
            events += self._step(p, self._windows_done * window, window)
        if self._state == "silence":
            self._trim(int(self.options.pre_roll_ms * SAMPLE_RATE / 1000))
        elif self._buffered >= self.options.max_utterance_s * SAMPLE_RATE:
            t = self._samples / SAMPLE_RATE
            if self._state == "speech":
                events.append(SpeechPaused(t, self._audio()))
            events.append(SpeechEnded(t, self._audio(), forced=True))
            self._reset_turn()
        return events

    def _step(self, p: float, window_end: int, window: int) -> list[EndpointEvent]:
        o = self.options
        t = window_end / SAMPLE_RATE
        if self._state == "silence":
            if p >= o.threshold:
                self._run += window
                if self._run >= o.min_speech_ms * SAMPLE_RATE / 1000:
                    self._state = "speech"
                    self._start_sample = window_end - self._run
                    self._run = 0
                    return [SpeechStarted(self._start_sample / SAMPLE_RATE)]
            else:
                self._run = 0
        elif self._state == "speech":
            if p < o.neg_threshold:
                self._state, self._run = "paused", window
                return [SpeechPaused(t - window / SAMPLE_RATE, self._audio())]
        elif p >= o.threshold:
            self._state, self._run = "speech", 0
            return [SpeechResumed(t)]
        else:
            self._run += window
            if self._run >= o.hangover_ms * SAMPLE_RATE / 1000:
                ended = SpeechEnded(t, self._audio())
                self._reset_turn()
                return [ended]
        return []

    def _reset_turn(self) -> None:
        self._state, self._run = "silence", 0
        self._chunks, self._buffered = [], 0

    def _audio(self) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = [audio]
        return audio

    def _trim(self, keep: int) -> None:
        if self._buffered > keep * 2:
            audio = self._audio()[-keep:]
            self._chunks, self._buffered = [audio], len(audio)
