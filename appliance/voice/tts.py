"""Streaming TTS: text is cut into phrases and each phrase is synthesised and delivered as soon as it is
ready, so the first audio comes from the first words, not the whole sentence. Cancelling stops at once.

Voices: Piper (VITS ONNX through the runtime layer; espeak-ng phonemes via piper-tts's bundled bridge),
and an espeak-ng fallback for languages with no Piper voice, labelled as such.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.audio import AudioError, read_audio, resample
from appliance.errors import ApplianceError
from appliance.runtime.base import TensorSession

_PHONEMIZER_LOCK = threading.Lock()  # espeak-ng keeps one global voice: phonemize one text at a time
CACHE_BYTES = 16 << 20  # per voice: ~3 min of 22 kHz speech, the phrases a call flow says on every call
RUNS = max(2, os.cpu_count() or 2)  # Piper syntheses at once per voice: more only add memory (~130 MB each)


class TtsError(ApplianceError):
    """Synthesis cannot be done as asked (no voice for a language, empty text)."""


@dataclass(frozen=True)
class TtsChunk:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    text: str  # the phrase this audio says
    voice: str  # voice label, e.g. "piper:en_US-joe-medium" or "espeak-ng:es (fallback)"
    fallback: bool


class Voice(Protocol):
    label: str
    language: str
    sample_rate: int
    fallback: bool

    def synthesize(self, text: str) -> np.ndarray:
        """Blocking synthesis of one phrase: float32 mono at ``sample_rate``."""
        ...


class PhraseCache:
    """Synthesised phrases by text, least recently used first out, within ``limit`` bytes: a call-center flow
    says its greeting and menus on every call, and each synthesis costs CPU and a burst of memory. The arrays
    are read-only (they are shared by every call that says the phrase). Calls that ask for a phrase while it is
    being synthesised wait for that synthesis (``fetch``) instead of running their own."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit, self.size, self.hits, self.misses = limit, 0, 0, 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[str, threading.Event] = {}

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            audio = self._items.get(text)
            if audio is None:
                self.misses += 1
                return None
            self._items.move_to_end(text)
            self.hits += 1
            return audio

    def put(self, text: str, audio: np.ndarray) -> np.ndarray:
        audio.setflags(write=False)
        if audio.nbytes > self.limit // 4:
            return audio
        with self._lock:
            if text not in self._items:
                self._items[text] = audio
                self.size += audio.nbytes
            while self.size > self.limit:
                self.size -= self._items.popitem(last=False)[1].nbytes
        return audio

    def fetch(self, text: str, make: Callable[[str], np.ndarray]) -> np.ndarray:
        """The cached phrase, else ``make(text)`` run once however many threads ask for it at the same time."""
        while True:
            audio = self.get(text)
            if audio is not None:
                return audio
            with self._lock:
                pending = self._pending.get(text)
                if pending is None:
                    self._pending[text] = threading.Event()
            if pending is None:
                break
            pending.wait(60)  # then from the cache (or, if that synthesis failed or was too long, our own)
            if text not in self._items:
                return self.put(text, make(text))
        try:
            return self.put(text, make(text))
        finally:
            with self._lock:
                self._pending.pop(text).set()


class PiperVoice:
    fallback = False

    def __init__(self, session: TensorSession, config_path: Path) -> None:
        config = json.loads(config_path.read_text())
        self._session = session
        self._id_map: dict[str, list[int]] = config["phoneme_id_map"]
        self._espeak_voice = config["espeak"]["voice"]
        inference = config.get("inference", {})
        self._scales = np.array([inference.get("noise_scale", 0.667), inference.get("length_scale", 1.0),
                                 inference.get("noise_w", 0.8)], np.float32)
        self.sample_rate = int(config["audio"]["sample_rate"])
        self.language = self._espeak_voice.split("-")[0]
        self.label = f"piper:{config.get('dataset') or config_path.stem}"
        from piper.phonemize_espeak import EspeakPhonemizer

        with _PHONEMIZER_LOCK:
            self._phonemizer = EspeakPhonemizer()
        self.cache = PhraseCache()
        self._runs = threading.BoundedSemaphore(RUNS)

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids per sentence, with Piper's BOS/PAD/EOS framing."""
        from piper.phoneme_ids import phonemes_to_ids

        with _PHONEMIZER_LOCK:
            sentences = self._phonemizer.phonemize(self._espeak_voice, text)
        return [phonemes_to_ids(s, self._id_map) for s in sentences if s]

    def synthesize(self, text: str) -> np.ndarray:
        """The phrase's audio (read-only: it may come from the cache)."""
        return self.cache.fetch(text, self._synthesize)

    def _synthesize(self, text: str) -> np.ndarray:
        pieces = []
        for ids in self.phoneme_ids(text):
            with self._runs:
                out = self._session.run({"input": np.array([ids], np.int64),
                                         "input_lengths": np.array([len(ids)], np.int64), "scales": self._scales})
            pieces.append(next(iter(out.values())).reshape(-1).astype(np.float32))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


class EspeakVoice:
    """The espeak-ng synthesiser itself: robotic but intelligible, for languages without a neural voice."""

    fallback = True
    sample_rate = 22050

    def __init__(self, language: str, binary: str = "espeak-ng") -> None:
        path = shutil.which(binary)
        if path is None:
            raise TtsError(f"no voice for '{language}': the espeak-ng fallback is not installed "
                           "(fix: apt-get install espeak-ng)")
        voices = subprocess.run([path, "--voices"], capture_output=True, text=True, timeout=10).stdout
        if not re.search(rf"^\s*\d+\s+{re.escape(language)}\b", voices, re.MULTILINE):
            raise TtsError(f"no voice for language '{language}', not even espeak-ng's")
        self._binary = path
        self.language = language
        self.label = f"espeak-ng:{language} (fallback)"

    def synthesize(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
            wav = Path(tmp) / "out.wav"  # a file, not --stdout: its streamed header has no length
            proc = subprocess.run([self._binary, "-v", self.language, "-w", str(wav), "--", text],
                                  capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise TtsError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
            try:
                audio = read_audio(wav, target_rate=self.sample_rate)
            except AudioError as exc:
                raise TtsError(f"espeak-ng gave no usable audio: {exc}") from None
        return audio.samples


_BOUNDARY = re.compile(r"(?<=[,;:.!?])\s+")


def phrases(text: str, first_words: int = 3) -> list[str]:
    """Cut text at clause punctuation; the first phrase is at most ``first_words`` words long so that
    synthesis of the first audio is short."""
    parts = [p.strip() for p in _BOUNDARY.split(text.strip()) if p.strip()]
    if not parts:
        return []
    head = parts[0].split()
    if len(head) > first_words:
        parts[0:1] = [" ".join(head[:first_words]), " ".join(head[first_words:])]
    return parts


class StreamingTts:
    """Phrase-level streaming over a Voice, resampled to the transport's rate, one phrase synthesised ahead."""

    def __init__(self, voice: Voice, out_rate: int | None = None, first_words: int = 3, chunking: bool = True) -> None:
        self.voice = voice
        self.out_rate = out_rate or voice.sample_rate
        self.first_words = first_words
        self.chunking = chunking  # False: the whole text as one phrase (the naive baseline)

    async def stream(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        """Yield one chunk per phrase. Closing the iterator (barge-in) abandons the rest at once."""
        todo = phrases(text, self.first_words) if self.chunking else [text.strip()] if text.strip() else []
        if not todo:
            return
        ahead: asyncio.Task[np.ndarray] | None = asyncio.create_task(asyncio.to_thread(self._render, todo[0]))
        try:
            for i, phrase in enumerate(todo):
                assert ahead is not None
                audio = await ahead
                ahead = asyncio.create_task(asyncio.to_thread(self._render, todo[i + 1])) if i + 1 < len(todo) else None
                yield TtsChunk(audio, self.out_rate, phrase, self.voice.label, self.voice.fallback)
        finally:
            if ahead is not None:
                ahead.cancel()

    def _render(self, phrase: str) -> np.ndarray:
        audio = self.voice.synthesize(phrase)
        return resample(audio, self.voice.sample_rate, self.out_rate) if self.out_rate != self.voice.sample_rate \
            else audio

    def synthesize(self, text: str) -> np.ndarray:
        """The whole text at once (blocking): for files and the naive baseline."""
        if not text.strip():
            raise TtsError("nothing to say: the text is empty")
        return self._render(text)
