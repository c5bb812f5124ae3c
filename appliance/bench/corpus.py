"""Real speech with transcripts for benchmarks and tests: Debian's Asterisk core sound prompts."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.audio import read_audio
from appliance.errors import ApplianceError

SOUNDS = Path("/usr/share/asterisk/sounds")
TRANSCRIPTS = {
    "en": Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"),
    "es": Path("/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz"),
}
PACKAGES = {"en": "asterisk-core-sounds-en-wav asterisk-core-sounds-en",
            "es": "asterisk-core-sounds-es-wav asterisk-core-sounds-es"}


@dataclass(frozen=True)
class Prompt:
    name: str
    language: str
    text: str
    audio: np.ndarray  # 16 kHz float32

    @property
    def duration(self) -> float:
        return len(self.audio) / 16000


def transcripts(language: str) -> dict[str, str]:
    """The transcripts of the language's top-level prompts, by name (the same name means the same words in
    every language: an English transcript is the reference translation of a Spanish prompt)."""
    listing = TRANSCRIPTS.get(language)
    if listing is None or not listing.exists():
        raise ApplianceError(f"no Asterisk prompts for '{language}'; fix: apt-get install {PACKAGES.get(language)}")
    texts: dict[str, str] = {}
    with gzip.open(listing, "rt", encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    for line in lines:
        name, sep, text = line.partition(":")
        text = text.strip()
        if sep and not line.startswith(";") and "/" not in name and text and not text.startswith("["):
            texts[name.strip()] = text
    return texts


def load_prompts(language: str, limit: int, min_s: float = 1.0, max_s: float = 8.0) -> list[Prompt]:
    """The first ``limit`` spoken prompts (sorted by name) between min_s and max_s long, with transcripts."""
    sounds = SOUNDS / language
    texts = transcripts(language)
    if not sounds.is_dir():
        raise ApplianceError(f"no Asterisk prompts for '{language}'; fix: apt-get install {PACKAGES.get(language)}")
    prompts = []
    for name in sorted(texts):
        path = sounds / f"{name}.wav"
        if not path.exists() or re.search(r"\[|\]|\.\.\.", texts[name]):
            continue
        audio = read_audio(path, target_rate=16000)
        if min_s <= audio.duration <= max_s:
            prompts.append(Prompt(name, language, texts[name], audio.samples))
        if len(prompts) >= limit:
            break
    return prompts


def last_speech_sample(audio: np.ndarray, rate: int = 16000, floor_db: float = -35.0) -> int:
    """Index just after the last 10 ms frame whose energy is within ``floor_db`` of the loudest frame."""
    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    voiced = np.nonzero(energy > energy.max() + floor_db)[0]
    return int((voiced[-1] + 1) * hop) if len(voiced) else 0
