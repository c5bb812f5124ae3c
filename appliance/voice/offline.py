"""Whole files, not streams: cut a recording into utterances with the endpointer, as fast as it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from appliance.audio.frame import ASR_RATE
from appliance.voice.endpoint import Endpointer, EndpointOptions, SpeechEnded, SpeechStarted
from appliance.voice.vad import SAMPLE_RATE, Vad

BLOCK = ASR_RATE  # feed a second at a time: the endpointer does not care about real time

# A file is cut at pauses of half a second, and at 25 s at the latest (Whisper's window is 30 s).
FILE_ENDPOINT = EndpointOptions(hangover_ms=500, pre_roll_ms=200, max_utterance_s=25.0, rejoin_ms=0)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    audio: np.ndarray


def segments(audio: np.ndarray, vad: Vad, options: EndpointOptions = FILE_ENDPOINT,
             progress: Callable[[float], None] | None = None) -> Iterator[Segment]:
    """Utterances of a 16 kHz float32 recording, in order, with their times in seconds."""
    endpointer = Endpointer(vad, options)
    start = 0.0
    tail = np.zeros(int((options.hangover_ms / 1000 + 0.1) * SAMPLE_RATE), np.float32)
    for i in range(0, len(audio) + len(tail), BLOCK):
        block = np.concatenate([audio, tail])[i : i + BLOCK]
        for event in endpointer.process(block):
            if isinstance(event, SpeechStarted):
                start = event.time
            elif isinstance(event, SpeechEnded):
                yield Segment(max(0.0, start - options.pre_roll_ms / 1000), min(event.time, len(audio) / SAMPLE_RATE),
                              event.audio)
        if progress:
            progress(min(len(block), max(0, len(audio) - i)) / SAMPLE_RATE)
