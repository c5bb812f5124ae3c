"""What a live session does with the voice it hears: caption it, answer it (assistant), or interpret it.

Every transport (WebSocket, WebRTC, the kiosk's own microphone) opens its session through here, so the
three modes behave the same whichever way the audio arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from appliance.audio.queue import PcmQueue
from appliance.bot.echo import EchoBot
from appliance.errors import ApplianceError
from appliance.interpret.session import Interpreter
from appliance.voice.asr import AsrOptions
from appliance.voice.conversation import Caption, Conversation, Flush, OutEvent, Output, Speech
from appliance.voice.endpoint import SpeechEnded, SpeechStarted
from appliance.voice.listener import Transcript
from appliance.voice.stack import VoiceStack

Mode = Literal["transcribe", "echo", "interpret"]
# Whisper's speech-to-English task serves any of its languages; a screen offers these.
SPEECH_TO_ENGLISH = ("de", "es", "fr", "it", "pt")


class SessionSpec(BaseModel):
    mode: Mode = "transcribe"
    language: str = "en"  # what the speaker speaks
    target: str | None = None  # interpret: the language to speak


def open_conversation(stack: VoiceStack, spec: SessionSpec, output: Output, out_rate: int,
                      partials: bool = True) -> Conversation:
    """A Conversation for ``spec`` on the shared models; raises ApplianceError for an unsupported pair.
    ``partials=False`` skips the transcripts made while the speaker talks (nobody sees them on a phone call;
    each costs a Whisper pass that the other calls wait for)."""
    task = "transcribe"
    translator = None
    speak_language = spec.language
    if spec.mode == "interpret":
        if not spec.target:
            raise ApplianceError("interpret needs a target language")
        router = stack.router()
        if spec.target == "en" and spec.language != "en" and router.speech_to_english:
            task = "translate"
        elif spec.target != spec.language:
            translator = router.route(spec.language, spec.target)
        speak_language = spec.target
    options = AsrOptions(language=spec.language, task=task)  # type: ignore[arg-type]
    tts = stack.tts(speak_language, out_rate=out_rate)
    responder: EchoBot | Interpreter
    conversation: Conversation

    async def say(text: str, utterance: int) -> None:
        await conversation.say(text, utterance)

    if spec.mode == "interpret":
        responder = Interpreter(spec.language, speak_language, translator, output, say)
    else:
        responder = EchoBot(output)

    async def respond(t: Transcript) -> str | None:
        text = await responder.respond(t)
        return text if spec.mode != "transcribe" else None

    conversation = Conversation(lambda emit: stack.listener(options, emit, partials=partials), tts, respond, output,
                                barge_in=spec.mode == "echo",
                                predict=responder.predict if spec.mode != "transcribe" else None)
    return conversation


def offered_pairs(stack: VoiceStack) -> list[tuple[str, str]]:
    """The interpretation pairs this device serves on its own models, for a screen to offer."""
    router = stack.router()
    pairs = {pair for t in router.translators for pair in getattr(t, "pairs", ())}
    if router.speech_to_english:
        pairs.update((language, "en") for language in SPEECH_TO_ENGLISH)
    return sorted(pairs)


def event_json(event: OutEvent) -> dict[str, Any]:
    """The JSON a client sees for an event (speech audio itself travels separately, per transport)."""
    if isinstance(event, Speech):
        return {"type": "audio", "utterance": event.utterance, "text": event.chunk.text, "voice": event.chunk.voice,
                "fallback": event.chunk.fallback}
    if isinstance(event, Flush):
        return {"type": "flush", "time": event.time}
    if isinstance(event, Caption):
        return {"type": "caption", "utterance": event.utterance, "source": event.source, "target": event.target,
                "final": event.final}
    return {"type": "speech_started" if isinstance(event, SpeechStarted) else "speech_ended", "time": event.time}


State = Literal["listening", "thinking", "speaking"]


class StateTracker:
    """The session state a screen shows: listening until the turn ends, thinking until the answer is heard
    (or, with nothing to say, its final caption), speaking until the transport has played it all."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.state: State = "listening"

    def on_event(self, event: OutEvent) -> State | None:
        new = self.state
        if isinstance(event, SpeechStarted | Flush):
            new = "listening"
        elif isinstance(event, SpeechEnded):
            new = "thinking"
        elif isinstance(event, Speech):
            new = "speaking"
        elif isinstance(event, Caption) and event.final and self.mode == "transcribe":
            new = "listening"
        return self._set(new)

    def played_out(self) -> State | None:
        return self._set("listening") if self.state == "speaking" else None

    def _set(self, new: State) -> State | None:
        changed, self.state = new != self.state, new
        return new if changed else None


class EventRelay:
    """A conversation's output for a transport that plays the speech itself (a WebRTC track, a sound card):
    speech into ``speaker``, dropped on barge-in; every event, and each change of state, to ``send`` as JSON.
    The speaker reports when it has played everything (``played_out``): that ends the speaking state."""

    def __init__(self, mode: Mode, speaker: PcmQueue, send: Callable[[dict[str, Any]], None]) -> None:
        self.speaker, self.send = speaker, send
        self.states = StateTracker(mode)
        speaker.on_drained = self.played_out

    async def __call__(self, event: OutEvent) -> None:
        if isinstance(event, Speech):
            self.speaker.push(event.chunk.audio)
        elif isinstance(event, Flush):
            self.speaker.flush()
        self.send(event_json(event))
        self._state(self.states.on_event(event))

    def played_out(self) -> None:
        self._state(self.states.played_out())

    def _state(self, state: State | None) -> None:
        if state is not None:
            self.send({"type": "state", "state": state})
