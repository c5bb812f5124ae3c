"""Local understanding of what a caller said: intents from example phrases, spoken numbers, yes/no and dates.

Intents are matched by TF-IDF cosine similarity over words and character n-grams of words (so "opening" meets
"open" and "messages" meets "message"), computed in plain Python over the flow's own examples: no model, no
download, and microseconds per utterance. English number, yes/no and date words; other languages rely on digits.
"""

from __future__ import annotations

import calendar
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta


def words(text: str) -> frozenset[str]:
    """A set of words written as one string."""
    return frozenset(text.split())


_STOP = words(
    "a an the to of for on in at it its is are am be was i id im ive me my we our you your please um uh er erm "
    "like just so well would could can do does want wanted wanna need hi hello hey there this that and or with "
    "what when where which who how why thanks thank"
)


def normalize(text: str) -> str:
    """Lower case, accents kept, punctuation and apostrophes dropped, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "").replace("’", "")
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def _features(text: str) -> Counter[str]:
    words = [w for w in tokens(text) if w not in _STOP] or tokens(text)
    features: Counter[str] = Counter()
    for word in words:
        features["w:" + word] += 1
        padded = f" {word} "
        for n in (3, 4):
            for i in range(len(padded) - n + 1):
                features[padded[i:i + n]] += 1
    return features


@dataclass(frozen=True)
class IntentMatch:
    name: str
    score: float  # cosine similarity 0..1


class IntentMatcher:
    """Which named intent, if any, an utterance expresses, judged against each intent's example phrases."""

    def __init__(self, examples: Mapping[str, Sequence[str]], threshold: float = 0.38) -> None:
        self.threshold = threshold
        docs = [(name, _features(e)) for name, phrases in examples.items() for e in phrases]
        df: Counter[str] = Counter(f for _, feats in docs for f in feats)
        self._idf = {f: math.log((1 + len(docs)) / (1 + n)) + 1 for f, n in df.items()}
        # A feature no example has lowers the similarity, at a quarter of the weight of the rarest one: callers
        # pad their requests with words no example has ("hello, I wanted to ask when your shop in Leeds opens").
        self._unseen = (math.log(1 + len(docs)) + 1) / 4
        self._vectors: list[tuple[str, dict[str, float]]] = [(name, self._vector(f)) for name, f in docs]
        for name in examples:  # each intent's centroid too: an utterance may mix words of two examples
            total: Counter[str] = Counter()
            for doc_name, feats in docs:
                if doc_name == name:
                    total.update(feats)
            self._vectors.append((name, self._vector(total)))

    def _vector(self, features: Mapping[str, float]) -> dict[str, float]:
        vector = {f: (1 + math.log(n)) * self._idf.get(f, self._unseen) for f, n in features.items()}
        norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
        return {f: v / norm for f, v in vector.items()}

    def scores(self, text: str) -> list[IntentMatch]:
        """Every intent with its best similarity to ``text``, best first."""
        query = self._vector(_features(text))
        best: dict[str, float] = {}
        for name, vector in self._vectors:
            score = sum(v * vector.get(f, 0.0) for f, v in query.items())
            best[name] = max(best.get(name, 0.0), score)
        return sorted((IntentMatch(n, round(s, 4)) for n, s in best.items()), key=lambda m: -m.score)

    def match(self, text: str) -> IntentMatch | None:
        """The best intent if it reaches the threshold, else None."""
        ranked = self.scores(text)
        return ranked[0] if ranked and ranked[0].score >= self.threshold else None


# --- numbers ---------------------------------------------------------------------------------------------------

UNITS = {"zero": 0, "oh": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
         "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
        "ninety": 90}
SCALES = {"thousand": 1000, "million": 1_000_000}
REPEATS = {"double": 2, "triple": 3}
NUMBER_WORDS = frozenset([*UNITS, *TEENS, *TENS, *SCALES, *REPEATS, "hundred"])
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
             "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
             "twentieth": 20, "thirtieth": 30}


def _kind(token: str) -> str | None:
    if token in UNITS:
        return "unit"
    if token in TEENS:
        return "teen"
    if token in TENS:
        return "tens"
    if token == "hundred":
        return "hundred"
    if token in SCALES:
        return "scale"
    return None


# What may come before each kind of number word (None: nothing, the number starts here).
_FOLLOWS: dict[str, set[str | None]] = {
    "unit": {None, "tens", "hundred", "scale", "and"}, "teen": {None, "hundred", "scale", "and"},
    "tens": {None, "hundred", "scale", "and"}, "hundred": {"unit", "teen"},
    "scale": {"unit", "teen", "tens", "hundred"},
}


def _cardinal(words: Sequence[str], i: int) -> tuple[int, int]:
    """The longest cardinal number spelled from ``words[i]`` on: (value, index after it); (-1, i) if none."""
    total = current = 0
    last: str | None = None
    j = i
    while j < len(words):
        word = words[j]
        kind = "and" if word == "and" else _kind(word)
        if kind == "and":
            if last not in ("hundred", "scale") or j + 1 >= len(words) or _kind(words[j + 1]) is None:
                break
        elif kind is None or last not in _FOLLOWS[kind]:
            break
        if kind == "unit":
            current += UNITS[word]
        elif kind in ("teen", "tens"):
            current += TEENS.get(word, 0) + TENS.get(word, 0)
        elif kind == "hundred":
            current *= 100
        elif kind == "scale":
            total, current = total + current * SCALES[word], 0
        last, j = kind, j + 1
    return (total + current, j) if j > i else (-1, i)


def _groups(text: str) -> list[list[str]]:
    """Digit strings of each contiguous run of number words or numerals in ``text``, in order."""
    words = normalize(text.replace("-", " ")).split()
    runs: list[list[str]] = []
    run: list[str] | None = None
    i = 0
    while i < len(words):
        word = re.sub(r"^(\d+)(st|nd|rd|th)$", r"\1", words[i])
        group: str | None = None
        if word.isdigit():
            group, i = word, i + 1
        elif word in REPEATS and i + 1 < len(words) and (words[i + 1] in UNITS or words[i + 1].isdigit()):
            digit = words[i + 1] if words[i + 1].isdigit() else str(UNITS[words[i + 1]])
            group, i = digit * REPEATS[word], i + 2
        else:
            value, after = _cardinal(words, i)
            if value >= 0:
                group, i = str(value), after
            else:
                i += 1
        if group is None:
            run = None
        else:
            if run is None:
                run = []
                runs.append(run)
            run.append(group)
    return runs


def parse_digits(text: str) -> str:
    """Every digit the caller spoke or typed, in order: "one two three" → "123", "double five 6" → "556"."""
    return "".join("".join(run) for run in _groups(text))


def parse_number(text: str) -> int | None:
    """The first number said: "twenty five" → 25, "two thousand and six" → 2006, "one two" → 12."""
    runs = _groups(text)
    return int("".join(runs[0])) if runs else None


# --- yes / no --------------------------------------------------------------------------------------------------

_YES = words("yes yeah yep yup yea ya sure correct right ok okay absolutely definitely certainly affirmative indeed "
             "exactly")
_NO = words("no nope nah not dont negative incorrect wrong never")


def yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the first decisive word is neither ("not right" is no)."""
    for word in tokens(text):
        if word in _NO:
            return False
        if word in _YES:
            return True
    return None


# --- dates -----------------------------------------------------------------------------------------------------

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}


def _day_number(words: list[str], i: int) -> int | None:
    """A day of the month at ``words[i]``: 5, 5th, fifth, twenty first, twenty-fifth."""
    word = re.sub(r"^(\d+)(st|nd|rd|th)$", r"\1", words[i]) if i < len(words) else ""
    if word.isdigit():
        return int(word)
    if word in _ORDINALS:
        return _ORDINALS[word]
    if word in TENS and i + 1 < len(words) and words[i + 1] in _ORDINALS:
        return TENS[word] + _ORDINALS[words[i + 1]]
    if word in TENS or word in TEENS or word in UNITS:
        value, _ = _cardinal(words, i)
        return value
    return None


def parse_date(text: str, today: date) -> date | None:
    """A date said in words: today, tomorrow, (next) friday, march fifth, the 5th of March, 2026-03-05."""
    iso = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", text)
    if iso:
        try:
            return date(*(int(g) for g in iso.groups()))
        except ValueError:
            return None
    words = normalize(text.replace("-", " ")).split()
    if "today" in words:
        return today
    if "tomorrow" in words:
        return today + timedelta(days=2 if "after" in words else 1)
    for i, word in enumerate(words):
        if word not in _MONTHS:
            continue
        after = i + 2 if i + 1 < len(words) and words[i + 1] == "the" else i + 1
        day = _day_number(words, after) if after < len(words) else None
        before = i - 2 if i >= 2 and words[i - 1] == "of" else i - 1
        if day is None and before >= 0:
            start = before - 1 if before >= 1 and words[before - 1] in TENS else before
            day = _day_number(words, start)
        if day is None:
            continue
        try:
            found = date(today.year, _MONTHS[word], day)
        except ValueError:
            return None
        return found if found >= today else found.replace(year=today.year + 1)
    for word in words:
        if word in _WEEKDAYS:
            ahead = (_WEEKDAYS[word] - today.weekday() - 1) % 7 + 1
            return today + timedelta(days=ahead)
    return None
