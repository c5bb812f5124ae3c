"""One speaker's stream: endpointing, partial transcripts committed by local agreement, speculative finals.

Partials: every `partial_interval_s` of new speech the utterance so far is transcribed; the words two
consecutive hypotheses agree on are committed (LocalAgreement-2) and never taken back; a pass starts only while
the voice is steady, not as it trails off (the final would queue behind it). Final: started at
the first silent window (SpeechPaused) so that decoding overlaps the hangover, discarded if speech resumes,
and delivered when the hangover ends the turn.

Rejoin: a speaker who pauses mid-sentence a little longer than the hangover ("Which … folder should I save it
to?") ends a turn too early. Speech that starts again within ``rejoin_ms`` of that end continues the turn: the
same utterance number, its passes decode the earlier audio and the new together, and its final (the whole
sentence) follows the early one, which a barge-in has usually cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from appliance.voice.asr import AsrOptions, AsrResult
from appliance.voice.endpoint import Endpointer, SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted
from appliance.voice.scheduler import AsrScheduler
from appliance.voice.vad import SAMPLE_RATE

_ids = itertools.count(1)
STEADY_SPEECH = 0.8  # a partial pass starts only while the last VAD window is at least this sure of speech


@dataclass(frozen=True)
class Transcript:
    """A partial or final hypothesis of one utterance. A rejoined turn has two finals under one number: the last
    is the whole of it."""

    utterance: int
    text: str
    committed: str  # the prefix that will not change any more (the whole text when final)
    final: bool
    start: float  # stream time of the speech start
    end: float  # stream time of the last speech (final only; else the audio end so far)
    result: AsrResult | None = field(default=None, repr=False)
    provisional: bool = False  # a speculative final, ready before the hangover confirmed the end of the turn


ListenerEvent = Transcript | SpeechStarted | SpeechResumed | SpeechEnded
Emit = Callable[[ListenerEvent], Awaitable[None]]
Escalate = Callable[[np.ndarray, AsrResult, AsrOptions], Awaitable[AsrResult]]  # voice/escalate.py


@dataclass
class ListenerStats:
    speculative_hits: int = 0  # finals whose speculative pass was used
    speculative_misses: int = 0  # speculative passes discarded because speech resumed
    partials: int = 0


class Listener:
    def __init__(self, endpointer: Endpointer, scheduler: AsrScheduler, options: AsrOptions, emit: Emit,
                 partial_interval_s: float = 0.6, partials: bool = True, speculative: bool = True,
                 escalate: Escalate | None = None) -> None:
        self.endpointer = endpointer
        self.scheduler = scheduler
        self.options = options
        self.emit = emit
        self.partial_interval_s = partial_interval_s
        self.partials = partials
        self.speculative = speculative
        self.escalate = escalate  # an unsure final may go to the upstream tier (within its route's budget)
        self.stream = f"stream-{next(_ids)}"
        self.stats = ListenerStats()
        self._utterance = 0
        self._start = 0.0
        self._last_partial_at = 0.0
        self._partial_task: asyncio.Task[None] | None = None
        self._final_task: asyncio.Task[AsrResult | None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._previous: tuple[str, ...] = ()
        self._committed: tuple[str, ...] = ()
        self._pause_time = 0.0
        self._partial_cost = 0.0  # compute seconds of the last partial pass
        self._ended: tuple[float, np.ndarray] | None = None  # the last turn's end (stream time) and audio
        self._before = np.zeros(0, np.float32)  # a rejoined turn's earlier audio, ahead of the endpointer's

    async def feed(self, samples: np.ndarray) -> None:
        """16 kHz mono float32 samples, in stream order."""
        events = await asyncio.to_thread(self.endpointer.process, samples)
        for event in events:
            if isinstance(event, SpeechStarted):
                self._begin(event)
                await self.emit(event)
            elif isinstance(event, SpeechPaused):
                self._pause_time = event.time
                if self.speculative:
                    self._final_task = asyncio.create_task(self._final_pass(self._joined(event.audio)))
            elif isinstance(event, SpeechResumed):
                self._discard_speculation()
                await self.emit(event)
            elif isinstance(event, SpeechEnded):
                await self.emit(event)
                self._finish(event)
        if self.partials and self.endpointer.in_speech and self._final_task is None:
            position = self.endpointer.position
            idle = self._partial_task is None or self._partial_task.done()
            # A slow model gets fewer partials, so that a final never queues behind many of them.
            interval = max(self.partial_interval_s, 2 * self._partial_cost)
            # Only while the speaker is clearly talking: a pass started as the voice trails off would still be
            # running when the pause comes, and the final would wait for it (a decode cannot be stopped).
            steady = self.endpointer.probability >= STEADY_SPEECH
            if idle and steady and position - self._last_partial_at >= interval:
                self._last_partial_at = position
                self._partial_task = asyncio.create_task(self._partial_pass(
                    self._utterance, self._joined(self.endpointer.utterance()), position))

    async def close(self) -> None:
        """Stop every task this stream started; pending finals are awaited so nothing said is lost."""
        if self._partial_task:
            self._partial_task.cancel()
        self._discard_speculation()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        self.scheduler.forget(self.stream)

    def _begin(self, event: SpeechStarted) -> None:
        self._last_partial_at = self.endpointer.position
        ended, self._ended = self._ended, None
        options = self.endpointer.options
        if ended is not None and options.rejoin_ms > 0 and event.time - ended[0] <= options.rejoin_ms / 1000 \
                and len(ended[1]) <= options.max_utterance_s * SAMPLE_RATE / 3:  # joined, still in one window
            self._before = ended[1]  # the same turn goes on: its number, start and committed words stay
            return
        self._before = np.zeros(0, np.float32)
        self._utterance = next(_ids)
        self._start = event.time
        self._previous, self._committed = (), ()

    def _joined(self, audio: np.ndarray) -> np.ndarray:
        """This turn's audio: a rejoined turn's earlier audio, then the endpointer's (contiguous: the endpointer
        starts collecting again right after the sample that ended the earlier turn)."""
        return np.concatenate([self._before, audio]) if self._before.size else audio

    def _discard_speculation(self) -> None:
        if self._final_task is not None:
            self._final_task.cancel()
            self._final_task = None
            self.stats.speculative_misses += 1

    async def _final_pass(self, audio: np.ndarray, speculative: bool = True) -> AsrResult | None:
        result = await self.scheduler.transcribe(self.stream, audio, self.options, final=True)
        if result is not None and self.escalate is not None:
            result = await self.escalate(audio, result, self.options)
        if speculative and result is not None and self._final_task is asyncio.current_task():
            # Still paused: let the application prepare its answer while the hangover runs out.
            await self.emit(Transcript(self._utterance, result.text, result.text, True, self._start,
                                       self._pause_time, result, provisional=True))
        return result

    def _finish(self, event: SpeechEnded) -> None:
        speculative, self._final_task = self._final_task, None
        if self._partial_task is not None:
            self._partial_task.cancel()
        utterance, start, end = self._utterance, self._start, self._pause_time if not event.forced else event.time
        audio = self._joined(event.audio)
        self._ended = (event.time, audio) if not event.forced else None
        if speculative is not None:
            self.stats.speculative_hits += 1
        else:
            speculative = asyncio.create_task(self._final_pass(audio, speculative=False))
        task = asyncio.create_task(self._deliver(utterance, start, end, speculative))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _deliver(self, utterance: int, start: float, end: float, final: asyncio.Task[AsrResult | None]) -> None:
        result = await final
        if result is None:
            return
        await self.emit(Transcript(utterance, result.text, result.text, True, start, end, result))

    async def _partial_pass(self, utterance: int, audio: np.ndarray, position: float) -> None:
        options = dataclasses.replace(self.options, fallback=False)
        result = await self.scheduler.transcribe(self.stream, audio, options, final=False)
        if result is None or utterance != self._utterance or self._final_task is not None:
            return  # superseded, or the turn moved on
        self._partial_cost = result.compute_s
        words = result.words
        agreed = _common_prefix(self._previous, words)
        if len(agreed) > len(self._committed):
            self._committed = agreed
        self._previous = words
        self.stats.partials += 1
        text = " ".join(self._committed + words[len(self._committed):]) if _starts_with(words, self._committed) \
            else " ".join(words)
        with contextlib.suppress(asyncio.CancelledError):
            await self.emit(Transcript(utterance, text, " ".join(self._committed), False, self._start, position,
                                       result))


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    for x, y in zip(a, b, strict=False):
        if _norm(x) != _norm(y):
            break
        n += 1
    return b[:n]


def _starts_with(words: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return len(words) >= len(prefix) and all(_norm(a) == _norm(b) for a, b in zip(words, prefix, strict=False))


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())
