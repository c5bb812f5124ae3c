"""Whisper ASR on CTranslate2: a window sized to the utterance (with a 30 s fallback when the output looks
degenerate), language identification, transcribe or translate-to-English, prompt and hotwords.

Blocking by design: callers run it in a worker thread (CTranslate2 releases the GIL); the scheduler does.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from appliance.audio.frame import ASR_RATE
from appliance.errors import ApplianceError
from appliance.models.residency import Lease, Pinned

SAMPLE_RATE = ASR_RATE
FRAMES_PER_SECOND = 100  # Whisper's mel hop is 10 ms
FULL_WINDOW = 3000  # 30 s, what the model was trained on


class AsrError(ApplianceError):
    """The request cannot be served as asked (e.g. translation with an English-only model)."""


@dataclass(frozen=True)
class AsrOptions:
    """How to decode one utterance."""

    language: str | None = None  # None: identify it (multilingual models); English-only models are "en"
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: any language to English text
    prompt: str | None = None  # previous text or domain words, as Whisper's initial prompt
    hotwords: tuple[str, ...] = ()  # words to favour; placed in the prompt
    fast_window: bool = True  # encoder window sized to the utterance instead of 30 s
    fallback: bool = True  # redo with the 30 s window when the fast output looks degenerate
    beam_size: int = 1
    no_speech_threshold: float = 0.6  # with a low log-probability: no speech, empty text (Whisper's rule)
    min_window_s: float = 5.0  # shorter windows make Whisper loop on short words ("Thank you. Thank you.")
    pad_s: float = 1.0  # silence after the audio inside the window


@dataclass(frozen=True)
class AsrResult:
    text: str
    language: str
    language_probability: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    window_frames: int
    fell_back: bool = False
    compute_s: float = 0.0
    words: tuple[str, ...] = field(default=())
    source: str = "local"  # or "upstream:<endpoint>" when an unsure final was escalated (voice/escalate.py)


class WhisperAsr:
    """One Whisper model, borrowed for each decode from its lease (a `Pinned` or `Lease` of
    appliance.models.residency; a bare CTranslate2 model is pinned). Thread-safe: CTranslate2 serialises or
    batches concurrent calls itself."""

    def __init__(self, model: Any, model_dir: Path) -> None:
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor

        self.lease = model if isinstance(model, Lease | Pinned) else Pinned(model)
        with self.lease.use() as loaded:
            self.multilingual = bool(loaded.is_multilingual)
            n_mels = loaded.n_mels
        self._hf_tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._features = FeatureExtractor(feature_size=n_mels)

    def _tokenizer(self, task: str, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self._hf_tokenizer, self.multilingual, task=task, language=language)

    def transcribe(self, audio: np.ndarray, options: AsrOptions = AsrOptions()) -> AsrResult:
        if options.task == "translate" and not self.multilingual:
            raise AsrError("this Whisper model is English-only; translation needs a multilingual model (whisper-base)")
        if audio.size == 0:
            return AsrResult("", options.language or "en", 0.0, 0.0, 1.0, 0.0, 0)
        start = time.perf_counter()
        duration = len(audio) / SAMPLE_RATE
        result = self._decode(audio, options, fast=options.fast_window)
        if options.fast_window:
            result = _without_restarts(result)
        if options.fast_window and options.fallback and _degenerate(result, duration, options.task):
            result = self._decode(audio, options, fast=False)
            result = replace(result, fell_back=True)
        if result.no_speech_prob > options.no_speech_threshold and result.avg_logprob < -0.5:
            result = replace(result, text="", words=())
        return replace(result, compute_s=time.perf_counter() - start)

    def _window(self, audio: np.ndarray, options: AsrOptions, fast: bool) -> np.ndarray:
        duration = len(audio) / SAMPLE_RATE
        if fast:
            seconds = max(options.min_window_s, duration + options.pad_s)
            frames = min(FULL_WINDOW, int(np.ceil(seconds)) * FRAMES_PER_SECOND)
        else:
            frames = FULL_WINDOW
        needed = frames * 160 + 160 - len(audio)
        padded = np.concatenate([audio[: frames * 160], np.zeros(max(0, needed), np.float32)])
        features = self._features(padded, padding=0)[:, :frames]
        return np.ascontiguousarray(features[None], dtype=np.float32)

    def _decode(self, audio: np.ndarray, options: AsrOptions, fast: bool) -> AsrResult:
        import ctranslate2

        features = self._window(audio, options, fast)
        with self.lease.use() as model:
            encoded = model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
            language, language_probability = options.language or "en", 1.0
            if self.multilingual and options.language is None:
                token, language_probability = model.detect_language(encoded)[0][0]
                language = token[2:-2]
            tokenizer = self._tokenizer(options.task, language)
            prompt = self._prompt(tokenizer, options)
            duration = len(audio) / SAMPLE_RATE
            out = model.generate(
                encoded,
                [prompt],
                beam_size=options.beam_size,
                max_length=min(448, int(24 + 12 * duration)),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
            )[0]
        ids = [t for t in out.sequences_ids[0] if t < tokenizer.eot]
        text = tokenizer.decode(ids).strip()
        avg_logprob = out.scores[0] / max(1, len(ids) + 1) if out.scores else 0.0
        return AsrResult(
            text=text,
            language=language,
            language_probability=float(language_probability),
            avg_logprob=float(avg_logprob),
            no_speech_prob=float(out.no_speech_prob),
            compression_ratio=_compression_ratio(text),
            window_frames=features.shape[-1],
            words=tuple(text.split()),
        )

    @staticmethod
    def _prompt(tokenizer: Any, options: AsrOptions) -> list[int]:
        tokens: list[int] = []
        context = " ".join([*options.hotwords, options.prompt or ""]).strip()
        if context:
            tokens = [tokenizer.sot_prev, *tokenizer.encode(" " + context)[-200:]]
        return [*tokens, *tokenizer.sot_sequence, tokenizer.no_timestamps]


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _degenerate(result: AsrResult, duration: float, task: str) -> bool:
    """Whisper's compression-ratio check, plus the loops a short window provokes: a phrase said twice in a
    row ("Agent login Agent login"), or more words than anyone speaks in that time. A low log-probability
    counts only for transcription: translations are often unsure, and the 30 s window rarely fixes them."""
    words_per_second = len(result.words) / max(duration, 0.5)
    unsure = task == "transcribe" and result.avg_logprob < -1.5
    return result.compression_ratio > 2.0 or unsure or words_per_second > 5.0 or _loops(result.words)


def _without_restarts(result: AsrResult) -> AsrResult:
    """The first sentence(s) of a fast-window decode that restarts itself: after the speech, the silence padding
    the short window makes Whisper start the same transcript again ("Then press pound. Then press pound.
    Then"), a copy of it from the first word, often cut off. When the words are nothing but such copies of a
    prefix that ends a sentence, the prefix is the transcript: no 30 s decode needed (it costs 5-10x as much).
    A phrase said twice inside a longer sentence is not a restart, and is left alone."""
    words = result.words
    norm = ["".join(c for c in w.lower() if c.isalnum()) for w in words]
    for size in range(1, len(words) // 2 + 1):
        if words[size - 1][-1:] not in (".", "?", "!"):
            continue
        if all(norm[i] == norm[i % size] for i in range(size, len(words))):
            text = " ".join(words[:size])
            return replace(result, text=text, words=words[:size], compression_ratio=_compression_ratio(text))
    return result


def _loops(words: tuple[str, ...], min_phrase: int = 2) -> bool:
    """True if some phrase of at least ``min_phrase`` words is immediately repeated."""
    norm = ["".join(c for c in w.lower() if c.isalnum()) for w in words]
    n = len(norm)
    for size in range(min_phrase, n // 2 + 1):
        for i in range(n - 2 * size + 1):
            if norm[i : i + size] == norm[i + size : i + 2 * size]:
                return True
    return False
