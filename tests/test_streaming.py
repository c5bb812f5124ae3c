"""The streaming pipeline on real speech: partials, speculative finals, streaming equal to batch, barge-in."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np

from appliance.audio.queue import PcmQueue
from appliance.bench.corpus import Prompt, load_prompts
from appliance.bench.text import wer
from appliance.sessions import EventRelay, SessionSpec, open_conversation
from appliance.voice.asr import AsrOptions
from appliance.voice.conversation import Conversation, OutEvent, Speech
from appliance.voice.endpoint import EndpointOptions, SpeechStarted
from appliance.voice.listener import ListenerEvent, Transcript
from appliance.voice.stack import VoiceStack

SILENCE = np.zeros(16000, np.float32)


async def feed(target: object, audio: np.ndarray, realtime: bool = False) -> None:
    start = time.monotonic()
    for i in range(0, len(audio), 320):
        if realtime:
            await asyncio.sleep(max(0.0, start + (i + 320) / 16000 - time.monotonic()))
        await target.feed(audio[i : i + 320])  # type: ignore[attr-defined]


def test_streaming_finals_match_batch(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    chosen = prompts_en[1:7]
    events: list[ListenerEvent] = []

    async def emit(event: ListenerEvent) -> None:
        events.append(event)

    async def run() -> None:
        listener = stack.listener(AsrOptions(language="en"), emit)
        for prompt in chosen:
            await feed(listener, np.concatenate([prompt.audio, SILENCE]), realtime=True)
        await listener.close()
        assert listener.stats.speculative_hits >= len(chosen)
        await stack.stop()

    asyncio.run(run())
    finals = [e for e in events if isinstance(e, Transcript) and e.final and not e.provisional]
    partials = [e for e in events if isinstance(e, Transcript) and not e.final]
    assert partials, "partial hypotheses while speaking"
    for a, b in itertools.pairwise(partials):  # committed text only grows within an utterance
        if a.utterance == b.utterance:
            assert b.committed.startswith(a.committed)
    asr = stack.asr["whisper-tiny-en"]
    batch = " ".join(asr.transcribe(p.audio, AsrOptions(language="en")).text for p in chosen)
    last = {f.utterance: f.text for f in finals}  # a rejoined turn's last final is the whole of it
    streamed = " ".join(last.values())
    assert wer([batch], [streamed]) <= 0.1, (batch, streamed)


def test_a_pause_a_little_over_the_hangover_does_not_cut_the_sentence(stack: VoiceStack) -> None:
    """Asterisk's "Which … folder should I save the message to?" pauses 220 ms after "Which": the endpointer
    ends the turn (200 ms hangover), speech starts again at once and rejoins it: the turn's last final is the
    whole sentence, under the same utterance number; without rejoining, the second turn lost "folder"."""
    prompt = next(p for p in load_prompts("en", 100_000, 1.5, 4.0) if p.name == "vm-savefolder")

    def finals(rejoin_ms: int) -> list[Transcript]:
        events: list[ListenerEvent] = []

        async def emit(event: ListenerEvent) -> None:
            events.append(event)

        async def run() -> None:
            listener = stack.listener(AsrOptions(language="en"), emit,
                                      endpoint=EndpointOptions(hangover_ms=200, rejoin_ms=rejoin_ms))
            await feed(listener, np.concatenate([SILENCE[:8000], prompt.audio, SILENCE]))
            await listener.close()

        asyncio.run(run())
        return [e for e in events if isinstance(e, Transcript) and e.final and not e.provisional]

    rejoined = finals(300)
    assert len({f.utterance for f in rejoined}) == 1 and len(rejoined) == 2, rejoined  # early final, then whole
    assert rejoined[-1].text.lower().startswith("which folder"), rejoined  # tiny.en hears "say this message too"
    cut = finals(0)
    assert len({f.utterance for f in cut}) == 2 and "folder" not in cut[-1].text.lower(), cut


def test_barge_in_stops_playout_within_100_ms(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    """As the transports play: the session's relay queues speech in a PcmQueue that a paced taker empties
    every 20 ms (a WebRTC track, the RTP sender, a sound card); the caller talking over the bot must
    silence it within 100 ms."""
    taken: list[tuple[float, bool]] = []  # (when, held speech)
    detected: list[float] = []
    flushes: list[float] = []
    speaker = PcmQueue()

    def send(event: dict[str, object]) -> None:
        if event["type"] == "speech_started":
            detected.append(time.monotonic())
        elif event["type"] == "flush":
            flushes.append(time.monotonic())

    async def play() -> None:
        while True:
            frame = speaker.take(320)
            taken.append((time.monotonic(), bool(np.any(frame))))
            await asyncio.sleep(0.02)

    async def run() -> None:
        player = asyncio.create_task(play())
        relay = EventRelay("echo", speaker, send)
        conversation = open_conversation(stack, SessionSpec(mode="echo"), relay, 16000)
        long_prompt = max(prompts_en, key=lambda p: p.duration)
        await feed(conversation, np.concatenate([long_prompt.audio, SILENCE]), realtime=True)
        deadline = time.monotonic() + 5
        while not any(sound for _, sound in taken) and time.monotonic() < deadline:
            await conversation.feed(np.zeros(320, np.float32))
            await asyncio.sleep(0.02)
        assert not speaker.empty(), "the bot is speaking"
        await feed(conversation, prompts_en[0].audio, realtime=True)  # the caller talks over the bot
        talked_over_until = time.monotonic()
        await conversation.close()
        await relay.close()
        player.cancel()
        await stack.stop()
        return talked_over_until

    until = asyncio.run(run())
    interrupt = detected[-1]
    assert flushes and flushes[-1] - interrupt < 0.1
    late = [t for t, sound in taken if sound and interrupt + 0.1 < t < until]
    assert late == [], f"{len(late)} frames of the interrupted answer played more than 100 ms after speech"


def test_speech_resuming_discards_the_speculative_final(stack: VoiceStack, prompts_en: list[Prompt]) -> None:
    events: list[ListenerEvent] = []
    first, second = (next(p for p in prompts_en if p.name == n) for n in ("agent-loginok", "agent-pass"))

    async def emit(event: ListenerEvent) -> None:
        events.append(event)

    async def run() -> None:
        from appliance.voice.endpoint import EndpointOptions

        listener = stack.listener(AsrOptions(language="en"), emit, endpoint=EndpointOptions(hangover_ms=600))
        gap = np.zeros(int(0.3 * 16000), np.float32)
        await feed(listener, np.concatenate([first.audio, gap, second.audio, SILENCE]), realtime=True)
        await listener.close()
        assert listener.stats.speculative_misses >= 1
        await stack.stop()

    asyncio.run(run())
    finals = [e for e in events if isinstance(e, Transcript) and e.final and not e.provisional]
    assert len(finals) == 1  # one turn: the pause was shorter than the hangover
    assert wer([first.text + " " + second.text], [finals[0].text]) <= 0.25
    assert isinstance(events[0], SpeechStarted) and any(isinstance(e, Speech) for e in events) is False


def test_closing_while_speaking_returns_at_once(stack: VoiceStack) -> None:
    """A caller who hangs up mid-answer: close() stops the answer and every task, promptly."""
    spoken: list[Speech] = []

    async def output(event: OutEvent) -> None:
        if isinstance(event, Speech):
            spoken.append(event)
            await asyncio.sleep(0.5)  # a slow transport: the answer is still being spoken at close

    async def respond(t: object) -> str | None:
        return None

    async def run() -> None:
        conversation = Conversation(lambda emit: stack.listener(AsrOptions(language="en"), emit),
                                    stack.tts("en"), respond, output)
        await conversation.say("This is a long answer, with several phrases, that nobody will hear to the end.")
        while not spoken:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(conversation.close(), timeout=2.0)
        assert conversation._speaker.done()
        await stack.stop()

    asyncio.run(run())
    assert 1 <= len(spoken) < 4
