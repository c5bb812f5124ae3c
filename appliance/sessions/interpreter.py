"""An interpretation session: speech in language A, captions in A and B, speech in B.

Clauses are spoken as soon as the listener commits them (the words two partial hypotheses agree on end
in clause punctuation), not only at the end of the turn; the final speaks whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

from appliance.errors import ApplianceError
from appliance.voice.conversation import Caption, OutEvent
from appliance.voice.listener import Transcript
from appliance.voice.mt import Translator

log = logging.getLogger(__name__)

_CLAUSE_END = re.compile(r"[.,;:!?]$")


class Interpreter:
    """The responder for a Conversation. ``translator`` is None when the ASR already outputs the target
    language (Whisper's speech-to-English task)."""

    def __init__(self, source: str, target: str, translator: Translator | None,
                 output: Callable[[OutEvent], Awaitable[None]], say: Callable[[str, int], Awaitable[None]],
                 early: bool = True) -> None:
        self.source, self.target = source, target
        self.translator = translator
        self.output = output
        self.say = say
        self.early = early
        self._spoken: dict[int, int] = {}  # utterance -> words already handed to TTS
        self._captions: set[asyncio.Task[None]] = set()

    async def respond(self, transcript: Transcript) -> str | None:
        words = transcript.committed.split() if not transcript.final else transcript.text.split()
        done = self._spoken.get(transcript.utterance, 0)
        if not transcript.final:
            await self.output(Caption(transcript.utterance, transcript.text, None, False))
            cut = _last_clause_end(words)
            if not self.early or cut <= done:
                return None
            piece, self._spoken[transcript.utterance] = " ".join(words[done:cut]), cut
            await self.say(await self._translate(piece), transcript.utterance)
            return None
        # A rejoined turn (listener.py) comes back under this number with the whole sentence: what was said stays
        # said. Only the latest turn can be rejoined, so only its count is kept.
        self._spoken = {transcript.utterance: len(words)}
        rest = " ".join(words[done:])
        translated = await self._translate(rest) if rest else ""
        if done and self.translator is not None:  # the caption wants the whole turn translated: off the hot path
            task = asyncio.create_task(self._caption_whole(transcript))
            self._captions.add(task)
            task.add_done_callback(self._captions.discard)
        else:  # speech → English by the ASR: the turn's text is already the whole translation
            whole = transcript.text if self.translator is None else translated
            await self.output(Caption(transcript.utterance, transcript.text, whole, True))
        return translated or None

    def predict(self, transcript: Transcript) -> str | None:
        """What the final will make us say, when that needs no translation call (speech → English)."""
        if self.translator is not None:
            return None
        rest = transcript.text.split()[self._spoken.get(transcript.utterance, 0):]
        return " ".join(rest) or None

    async def _caption_whole(self, transcript: Transcript) -> None:
        whole = await self._translate(transcript.text)
        await self.output(Caption(transcript.utterance, transcript.text, whole, True))

    async def _translate(self, text: str) -> str:
        if self.translator is None or not text.strip():
            return text
        translator = self.translator
        try:
            return await asyncio.to_thread(translator.translate, text, self.source, self.target)
        except ApplianceError as exc:  # an upstream translator down or slow: this piece goes unsaid, the call goes on
            log.warning("translation %s→%s failed (%s): %s", self.source, self.target, translator.label, exc)
            return ""


def _last_clause_end(words: list[str]) -> int:
    """Number of words up to and including the last one that ends a clause."""
    for i in range(len(words), 0, -1):
        if _CLAUSE_END.search(words[i - 1]):
            return i
    return 0
