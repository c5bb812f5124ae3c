"""What a live session is asked to do: its mode (caption, answer, interpret), the speaker's language and the
language to speak; and which interpretation pairs this device serves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from appliance.voice.stack import VoiceStack

Mode = Literal["transcribe", "echo", "interpret"]
# Whisper's speech-to-English task serves any of its languages; a screen offers these.
SPEECH_TO_ENGLISH = ("de", "es", "fr", "it", "pt")


class SessionSpec(BaseModel):
    mode: Mode = "transcribe"
    language: str = "en"  # what the speaker speaks
    target: str | None = None  # interpret: the language to speak


def offered_pairs(stack: VoiceStack) -> list[tuple[str, str]]:
    """The interpretation pairs this device serves on its own models, for a screen to offer."""
    router = stack.router()
    pairs = {pair for t in router.translators for pair in getattr(t, "pairs", ())}
    if router.speech_to_english:
        pairs.update((language, "en") for language in SPEECH_TO_ENGLISH)
    return sorted(pairs)
