"""Word error rate with a normaliser fit for prompts ("press 1" and "press one" are the same words); chrF of
translations (sacrebleu, the `bench` extra)."""

from __future__ import annotations

import re

import jiwer

_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = re.sub(r"[^\w' ]+", " ", text)
    return " ".join(text.split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    refs = [normalise(r) or "-" for r in references]
    hyps = [normalise(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def chrf(references: list[str], hypotheses: list[str]) -> float:
    """Corpus chrF (character n-grams up to 6, recall weighted twice) on normalised text, 0-100."""
    try:
        import sacrebleu
    except ImportError:
        from appliance.errors import ApplianceError

        raise ApplianceError("chrF needs sacrebleu: pip install 'appliance[bench]'") from None
    return float(sacrebleu.corpus_chrf([normalise(h) for h in hypotheses], [[normalise(r) for r in references]]).score)
