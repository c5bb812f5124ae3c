"""Call records: what was said (turns), the slots filled, the outcome, a summary, and where the audio is.

``CallStore`` keeps one directory per call under a root: ``call.json`` plus any WAV the call layer wrote there
(``CallRecorder``), pruned by age and count. ``CallRecord.redacted()`` is the view that may leave the device
(telemetry): e-mail addresses, phone numbers and any run of four or more digits, typed or spoken, are masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from appliance.bot.intents import NUMBER_WORDS, normalize, parse_digits, words
from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

Who = Literal["caller", "bot", "system"]
RECORD_FILE = "call.json"


@dataclass(frozen=True)
class Turn:
    """One entry of the call log: what was said or pressed or what happened, by whom, when."""

    who: Who
    text: str
    at: datetime
    kind: str = "speech"  # speech, dtmf, no_input, say, transfer, recording, hangup, event


@dataclass
class CallRecord:
    call_id: str
    flow: str
    started_at: datetime
    ended_at: datetime | None = None
    caller: str | None = None  # the caller's number or URI
    turns: list[Turn] = field(default_factory=list)
    slots: dict[str, str] = field(default_factory=dict)
    intents: list[str] = field(default_factory=list)  # intents and menu choices recognised, in order
    steps: list[str] = field(default_factory=list)  # steps visited, in order
    outcome: str = "in_progress"  # completed, transferred, voicemail, abandoned, failed
    recording: str | None = None  # WAV file name inside the call's directory
    voicemail: str | None = None  # WAV file name inside the call's directory
    summary: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["ended_at"] = self.ended_at.isoformat() if self.ended_at else None
        data["turns"] = [{**asdict(t), "at": t.at.isoformat()} for t in self.turns]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        data = dict(data)
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        data["ended_at"] = datetime.fromisoformat(data["ended_at"]) if data.get("ended_at") else None
        data["turns"] = [Turn(**{**t, "at": datetime.fromisoformat(t["at"])}) for t in data.get("turns", [])]
        return cls(**data)

    def redacted(self) -> CallRecord:
        """A copy with personal numbers and addresses masked in every text (for telemetry)."""
        return replace(
            self, caller=redact(self.caller) if self.caller else None,
            turns=[replace(t, text=redact(t.text)) for t in self.turns],
            slots={k: redact(v) for k, v in self.slots.items()},
            summary=redact(self.summary) if self.summary else None,
        )

    def transcript(self) -> str:
        """The conversation as text lines, "Caller: …" / "Bot: …" (presses shown as keys)."""
        lines = []
        for turn in self.turns:
            if turn.who == "system":
                continue
            text = f"pressed {turn.text}" if turn.kind == "dtmf" else turn.text
            lines.append(f"{turn.who.title()}: {text}")
        return "\n".join(lines)


# --- redaction -------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{5,}\d(?!\w)")
_DIGITS = re.compile(r"\d{4,}")
_WORD = "(?:" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r"|\d+)"
_SPOKEN = re.compile(rf"\b{_WORD}(?:[\s,.-]+(?:and\s+)?{_WORD})*\b", re.IGNORECASE)


def _phone(match: re.Match[str]) -> str:
    """A phone number has 7 to 15 digits, and a +, a leading 0 or separators (plain 55512345 is a number)."""
    found = match.group()
    digits = re.sub(r"\D", "", found)
    looks = found[0] in "+0(" or not found.isdigit()
    return "[phone]" if 7 <= len(digits) <= 15 and looks else found


def redact(text: str) -> str:
    """Mask e-mail addresses, phone numbers, and runs of ≥4 digits (also spoken: "four five six seven")."""
    text = _EMAIL.sub("[email]", text)
    text = _PHONE.sub(_phone, text)
    text = _DIGITS.sub("[number]", text)
    return _SPOKEN.sub(lambda m: "[number]" if len(parse_digits(m.group())) >= 4 else m.group(), text)


# --- summary ---------------------------------------------------------------------------------------------------

_FILLER = words("yes no yeah okay ok please thanks thank you hello hi um uh the a an to and i my me is it")
_OUTCOMES = {"completed": "the call ended normally", "transferred": "the caller was put through to a person",
             "voicemail": "the caller left a voicemail", "abandoned": "the caller hung up",
             "failed": "the call failed", "in_progress": "the call is still going on"}


class Summarizer(Protocol):
    async def summarize(self, transcript: str) -> str: ...


def extractive_summary(record: CallRecord, sentences: int = 2) -> str:
    """Intent, slots and outcome, plus the caller's most informative sentences, as plain text."""
    parts = []
    asked = [i.replace("_", " ") for i in record.intents if i not in ("yes", "no")]
    if asked:
        parts.append("The caller asked for " + ", then ".join(asked) + ".")
    if record.slots:
        parts.append("Details: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in record.slots.items()) + ".")
    outcome = _OUTCOMES.get(record.outcome, record.outcome.replace("_", " "))
    parts.append(outcome[0].upper() + outcome[1:] + ".")
    said = [s.strip() for t in record.turns if t.who == "caller" and t.kind == "speech"
            for s in re.split(r"(?<=[.!?])\s+", t.text) if s.strip()]
    scored = []
    for index, sentence in enumerate(said):
        words = {w for w in normalize(sentence).split() if w not in _FILLER and len(w) > 2}
        score = len(words) + (2 if re.search(r"\d", sentence) or words & NUMBER_WORDS else 0)
        if len(words) >= 3:
            scored.append((score, index, sentence))
    best = sorted(sorted(scored, reverse=True)[:sentences], key=lambda s: s[1])
    if best:
        parts.append("The caller said: " + " ".join(f'"{s}"' for _, _, s in best))
    return " ".join(parts)


async def summarize(record: CallRecord, llm: Summarizer | None = None) -> str:
    """The LLM's summary of the redacted transcript when ``llm`` is given and answers, else the extractive one."""
    if llm is not None and record.turns:
        try:
            return await llm.summarize(record.redacted().transcript())
        except (ApplianceError, TimeoutError) as exc:
            log.info("LLM summary of call %s failed (%s): extractive summary instead", record.call_id, exc)
    return extractive_summary(record)


# --- the store -------------------------------------------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class CallStore:
    """One directory per call under ``root``; ``prune()`` keeps at most ``max_records`` of at most
    ``retention_days`` days (None: no limit)."""

    def __init__(self, root: Path, retention_days: float | None = 30, max_records: int | None = 10_000) -> None:
        self.root = Path(root)
        self.retention_days = retention_days
        self.max_records = max_records

    def call_dir(self, call_id: str) -> Path:
        """The call's directory (created): the call layer writes its WAVs here."""
        name = call_id if _SAFE.match(call_id) and ".." not in call_id else hashlib.sha256(
            call_id.encode()).hexdigest()[:32]
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, record: CallRecord) -> Path:
        """Write the record atomically (a crash never leaves half a file); returns its path."""
        path = self.call_dir(record.call_id) / RECORD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load(self, call_id: str) -> CallRecord:
        path = self.call_dir(call_id) / RECORD_FILE
        try:
            return CallRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ApplianceError(f"call record {path} cannot be read: {exc}") from None

    def records(self) -> Iterator[CallRecord]:
        """Every readable record, oldest first."""
        for _, directory in self._calls():
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                yield CallRecord.from_json(json.loads((directory / RECORD_FILE).read_text(encoding="utf-8")))

    def _calls(self) -> list[tuple[datetime, Path]]:
        calls = []
        for directory in self.root.iterdir() if self.root.is_dir() else ():
            record = directory / RECORD_FILE
            if not directory.is_dir():
                continue
            try:
                started = datetime.fromisoformat(json.loads(record.read_text(encoding="utf-8"))["started_at"])
            except (OSError, ValueError, TypeError, KeyError):
                started = datetime.fromtimestamp(directory.stat().st_mtime, UTC)
            calls.append((started if started.tzinfo else started.replace(tzinfo=UTC), directory))
        return sorted(calls)

    def prune(self, now: datetime | None = None) -> list[Path]:
        """Delete calls older than the retention, then the oldest beyond ``max_records``; returns what went."""
        now = now or datetime.now(UTC)
        calls = self._calls()
        doomed: list[Path] = []
        if self.retention_days is not None:
            cutoff = now - timedelta(days=self.retention_days)
            doomed += [d for started, d in calls if started < cutoff]
        gone = set(doomed)  # a list lookup here made a retention pass over many old calls quadratic
        kept = [d for _, d in calls if d not in gone]
        if self.max_records is not None and len(kept) > self.max_records:
            # A directory without its record is a call in progress: never pruned for count.
            finished = [d for d in kept if (d / RECORD_FILE).exists()]
            doomed += finished[: len(kept) - self.max_records]
        for directory in doomed:
            shutil.rmtree(directory, ignore_errors=True)
        if doomed:
            log.info("pruned %d call records from %s", len(doomed), self.root)
        return doomed


# --- audio -----------------------------------------------------------------------------------------------------

class CallRecorder:
    """Both directions of a call in one 16-bit WAV, written as the call goes.

    ``mode="stereo"`` (the default) keeps the caller on the left channel and the bot on the right, so either side
    can be listened to or transcribed alone; ``mode="mixed"`` sums them into one mono channel (half the size);
    a voicemail is a mixed recording fed only with ``inbound``. Chunks are int16 at ``rate`` (16 kHz). Without
    ``at_s`` a chunk follows its own direction's previous chunk; with ``at_s`` (seconds since the call started)
    it is placed there, and a gap is silence. A direction that falls more than ``lag_s`` behind the other is
    taken as silent for that time (a late chunk for audio already written is cut). Writes go to disk about every
    ``lag_s`` seconds of audio: small, but blocking; a strict event loop calls this from a worker thread.
    """

    def __init__(self, path: Path, mode: Literal["stereo", "mixed"] = "stereo", rate: int = 16000,
                 lag_s: float = 1.0) -> None:
        import soundfile

        self.path, self.mode, self.rate = Path(path), mode, rate
        self._lag = int(lag_s * rate)
        self._file = soundfile.SoundFile(self.path, "w", samplerate=rate, channels=2 if mode == "stereo" else 1,
                                         format="WAV", subtype="PCM_16")
        self._pending = np.zeros((0, 2), dtype=np.int32)  # frames from self._written on
        self._written = 0
        self._ends = [0, 0]  # frame after the last sample of each direction

    def inbound(self, pcm: np.ndarray, at_s: float | None = None) -> None:
        """The caller's audio."""
        self._add(0, pcm, at_s)

    def outbound(self, pcm: np.ndarray, at_s: float | None = None) -> None:
        """The bot's audio."""
        self._add(1, pcm, at_s)

    def _add(self, channel: int, pcm: np.ndarray, at_s: float | None) -> None:
        samples = np.asarray(pcm, dtype=np.int16).reshape(-1)
        start = self._ends[channel] if at_s is None else round(at_s * self.rate)
        if start < self._written:  # already on disk: keep only the part after it
            samples, start = samples[self._written - start:], self._written
        end = start + len(samples)
        self._ends[channel] = max(self._ends[channel], end)
        if end - self._written > len(self._pending):
            grown = np.zeros((end - self._written, 2), dtype=np.int32)
            grown[: len(self._pending)] = self._pending
            self._pending = grown
        self._pending[start - self._written: end - self._written, channel] = samples
        if max(self._ends) - self._written > 2 * self._lag:
            self._flush(max(self._ends) - self._lag)

    def _flush(self, upto: int) -> None:
        count = upto - self._written
        if count <= 0:
            return
        frames, self._pending = self._pending[:count], self._pending[count:]
        if self.mode == "mixed":
            frames = np.clip(frames.sum(axis=1, keepdims=True), -32768, 32767)
        self._file.write(frames.astype(np.int16))
        self._written = upto

    @property
    def duration_s(self) -> float:
        return max(self._written, *self._ends) / self.rate

    def close(self) -> float:
        """Write what is left and close the file; returns the recording's length in seconds."""
        if not self._file.closed:
            self._flush(max(self._ends))
            self._file.close()
        return self._written / self.rate

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
