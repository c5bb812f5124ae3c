"""The conversation and the call bot's flow on fakes (tests/support/fakes.py): a scripted listener, a TTS that
says words as a few samples, a call control that records. Milliseconds each, with asyncio's debug mode
catching any step that blocks the loop; the real-peer tests prove the same paths with real models and peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from appliance.audio.queue import PcmQueue
from appliance.bot.callbot import FlowCallApp
from appliance.bot.flow import EXAMPLE_FLOW, load_flow
from appliance.sessions import EchoBot, Interpreter
from appliance.voice.conversation import Caption, Conversation, Flush, OutEvent, Speech
from appliance.voice.endpoint import SpeechEnded, SpeechStarted
from appliance.voice.listener import Transcript
from appliance.voice.turns import TurnLatencies
from tests.support.fakes import FakeCallControl, FakeStack, FakeTts, ScriptedListener, Spoken
from tests.support.loop import checked_run


def echo_conversation(tts: FakeTts) -> tuple[Conversation, list[OutEvent], list[ScriptedListener]]:
    out: list[OutEvent] = []
    listeners: list[ScriptedListener] = []

    async def output(event: OutEvent) -> None:
        out.append(event)

    def make(emit: Any) -> Any:
        listeners.append(ScriptedListener(emit))
        return listeners[-1]

    bot = EchoBot(output)
    return Conversation(make, tts, bot.respond, output, predict=bot.predict), out, listeners


def test_a_turn_is_captioned_then_answered_word_by_word_in_order() -> None:
    async def main() -> list[OutEvent]:
        conversation, out, (listener,) = echo_conversation(FakeTts())
        await listener.speak("hello there")
        await conversation.drained()
        await conversation.close()
        return out

    out = checked_run(main())
    # every start of speech flushes first: the transport may still hold audio even when nothing is being made
    assert [type(e) for e in out] == [Flush, SpeechStarted, SpeechEnded, Caption, Speech, Speech]
    assert [e.chunk.text for e in out if isinstance(e, Speech)] == ["hello", "there"]
    assert [e.first for e in out if isinstance(e, Speech)] == [True, False]


def test_each_answered_turn_records_its_latency_once() -> None:
    async def main() -> dict[str, float]:
        conversation, _, (listener,) = echo_conversation(FakeTts(delay_s=0.05))
        conversation.latencies = TurnLatencies()
        for words in ("hello there", "and again"):
            await listener.speak(words)
            await conversation.drained()
        await conversation.close()
        return conversation.latencies.take()

    figures = checked_run(main())
    assert figures["turns"] == 2 and 50 <= figures["turn_latency_p50_ms"] <= figures["turn_latency_p95_ms"] < 1000


def test_turn_latencies_are_taken_once() -> None:
    turns = TurnLatencies()
    for ms in range(1, 101):
        turns.add(ms / 1000)
    assert turns.take() == {"turn_latency_p50_ms": 51.0, "turn_latency_p95_ms": 96.0, "turns": 100.0}
    assert turns.take() == {}


def test_speech_over_the_answer_flushes_it_and_drops_the_rest() -> None:
    async def main() -> tuple[list[OutEvent], Conversation]:
        conversation, out, (listener,) = echo_conversation(FakeTts(delay_s=0.02))
        await listener.speak("one two three four five six seven eight")
        while not any(isinstance(e, Speech) for e in out):
            await asyncio.sleep(0.005)
        await listener.start()  # the caller talks over the bot
        await conversation.drained()
        await conversation.close()
        return out, conversation

    out, conversation = checked_run(main())
    first_word = next(i for i, e in enumerate(out) if isinstance(e, Speech))
    flush = next(i for i, e in enumerate(out) if isinstance(e, Flush) and i > first_word)
    assert isinstance(out[flush + 1], SpeechStarted) and conversation.barge_ins == 1
    spoken = [e.chunk.text for e in out if isinstance(e, Speech)]
    assert 1 <= len(spoken) < 8 and not any(isinstance(e, Speech) for e in out[flush:])


def test_a_speculative_final_prepares_the_answer_once() -> None:
    tts = FakeTts()

    async def main() -> list[OutEvent]:
        conversation, out, (listener,) = echo_conversation(tts)
        await listener.speak("prepared early", provisional_first=True)
        await conversation.drained()
        await conversation.close()
        return out

    out = checked_run(main())
    assert tts.streams == ["prepared early"]  # the prepared stream was used, not synthesised again
    assert [e.chunk.text for e in out if isinstance(e, Speech)] == ["prepared", "early"]


OPEN = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)  # a Wednesday morning: the example office is open


async def call(control: FakeCallControl, words: str, until: Callable[[str], bool]) -> str:
    """The example flow on a fake call: the speaker is played out as a transport would, the caller says
    ``words``, and the call runs until ``until(what the bot said so far)``; what the bot said."""
    stack, speaker, said = FakeStack(), PcmQueue(), []

    def event(e: dict[str, Any]) -> None:
        if e["type"] == "audio":
            said.append(e["text"])

    async def play() -> None:
        while True:
            speaker.take(320)
            await asyncio.sleep(0.001)

    player = asyncio.create_task(play())
    app = FlowCallApp(stack, load_flow(EXAMPLE_FLOW), control, speaker, 16000, on_event=event,  # type: ignore[arg-type]
                      clock=lambda: OPEN)
    await app.answered()
    (listener,) = stack.listeners
    await listener.speak(words)
    deadline = time.monotonic() + 5
    while not until(" ".join(said)):
        assert time.monotonic() < deadline, f"the call did not get there; the bot said: {' '.join(said)}"
        await asyncio.sleep(0.005)
    await app.close()
    player.cancel()
    return " ".join(said)


def test_asking_for_a_person_transfers_the_call() -> None:
    control = FakeCallControl()
    said = checked_run(call(control, "talk to a person", lambda said: bool(control.transfers)))
    assert control.transfers == ["100"]
    assert said.startswith("Hello,") and "hold" in said  # greeted, then told to hold before the transfer


def test_a_failed_transfer_apologises_and_offers_a_message() -> None:
    control = FakeCallControl(transfer_ok=False)
    said = checked_run(call(control, "an agent please", lambda said: "after the tone" in said))
    assert control.transfers == ["100"] and control.hangups == []
    assert said.index("hold") < said.index("nobody is available") < said.index("leave your name")


def test_goodbye_ends_the_call_after_the_bot_has_said_it() -> None:
    control = FakeCallControl()
    said = checked_run(call(control, "goodbye", lambda said: control.hung_up.is_set()))
    assert control.hangups and control.transfers == []
    assert said.endswith("Goodbye.")  # said in full before the hang-up


def test_the_loop_guard_fails_a_blocking_step() -> None:
    async def blocks() -> None:
        time.sleep(0.3)  # a blocking call on the loop

    with pytest.raises(AssertionError, match="the event loop was blocked"):
        checked_run(blocks())


def test_the_speaking_state_ends_when_another_thread_has_played_it_all() -> None:
    """A sound card takes the speech on its own thread: the relay hears the queue empty and says "listening"."""
    import threading

    from appliance.sessions import EventRelay
    from appliance.voice.tts import TtsChunk

    speaker, sent = PcmQueue(), []

    async def main() -> None:
        relay = EventRelay("echo", speaker, sent.append)
        await relay(SpeechEnded(1.0, np.zeros(0, np.float32)))
        await relay(Speech(TtsChunk(np.full(960, 0.1, np.float32), 16000, "hi", "fake", False), 1, True, 0.0))
        taker = threading.Thread(target=lambda: [speaker.take(320) for _ in range(4)])
        taker.start()
        deadline = time.monotonic() + 2
        while [e["state"] for e in sent if e["type"] == "state"][-1:] != ["listening"]:
            assert time.monotonic() < deadline, sent
            await asyncio.sleep(0.005)
        taker.join()
        await relay(Speech(TtsChunk(np.full(320, 0.1, np.float32), 16000, "again", "fake", False), 2, True, 0.0))
        await relay.close()  # the session ends with speech still queued: nothing is left waiting

    checked_run(main())
    assert [e["state"] for e in sent if e["type"] == "state"] == ["thinking", "speaking", "listening", "speaking"]


def test_a_rejoined_turn_is_interpreted_from_where_its_early_final_stopped() -> None:
    """The listener may deliver a turn twice (listener.py: rejoin): the early final, then the whole sentence
    under the same number. What was said stays said; the rest is spoken; the caption is the whole sentence."""
    spoken = Spoken()

    def final(utterance: int, text: str) -> Transcript:
        return Transcript(utterance, text, text, True, 0.0, 1.0)

    async def run() -> list[str | None]:
        interpreter = Interpreter("es", "en", None, spoken.output, spoken.say)  # speech → English by the ASR
        return [await interpreter.respond(final(7, "Which?")),
                await interpreter.respond(final(7, "Which folder should I save it to?")),
                await interpreter.respond(final(8, "Thank you."))]

    assert checked_run(run()) == ["Which?", "folder should I save it to?", "Thank you."]
    assert [e.target for e in spoken.out if isinstance(e, Caption)] == ["Which?", "Which folder should I save it to?",
                                                                 "Thank you."]
