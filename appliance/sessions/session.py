"""Opening a session: a Conversation on the shared models whose responder captions (transcribe), answers
(echo) or interprets, whichever transport carries the audio.

Every transport (WebSocket, WebRTC, the kiosk's own microphone, a phone call) opens its session through here,
so the three modes behave the same whichever way the audio arrives.
"""

from __future__ import annotations

from appliance.errors import ApplianceError
from appliance.sessions.echo import EchoBot
from appliance.sessions.interpreter import Interpreter
from appliance.sessions.spec import SessionSpec
from appliance.voice.asr import AsrOptions
from appliance.voice.conversation import Conversation, Output
from appliance.voice.listener import Transcript
from appliance.voice.stack import VoiceStack


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
