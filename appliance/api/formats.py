"""Transcription response formats of the OpenAI audio API: json, text, verbose_json, srt, vtt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


def render(fmt: str, task: str, language: str, duration: float, segments: list[Segment]) -> tuple[Any, str]:
    """(body, media type): a dict for the JSON formats, a string otherwise."""
    text = " ".join(s.text for s in segments).strip()
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "verbose_json":
        return {"task": task, "language": language, "duration": round(duration, 2), "text": text,
                "segments": [{"id": i, "start": round(s.start, 2), "end": round(s.end, 2), "text": s.text}
                             for i, s in enumerate(segments)]}, "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        blocks = [f"{i + 1}\n{_ts(s.start, ',')} --> {_ts(s.end, ',')}\n{s.text}\n" for i, s in enumerate(segments)]
        return "\n".join(blocks), "application/x-subrip; charset=utf-8"
    blocks = [f"{_ts(s.start, '.')} --> {_ts(s.end, '.')}\n{s.text}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks), "text/vtt; charset=utf-8"


def _ts(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"
