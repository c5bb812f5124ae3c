"""The call-center bot on a call: the flow engine's actions carried out on the shared voice core.

Speech is heard by the voice core's listener; finals and key presses go to the FlowEngine; its actions run in
order on one task: ``Say`` through streaming TTS into the call (barge-in drops it), ``Listen`` arms the no-input
timer once everything before it was heard, ``Transfer``/``Hangup`` wait for the speech before them to be played,
``StartRecording`` keeps the caller's audio (voicemail) until the time is up, # or hang-up. When the call ends
the record (transcript, slots, outcome, summary, WAVs) goes to the call store, which applies its retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import soundfile as sf

from appliance.audio.frame import ASR_RATE, float_to_int16
from appliance.audio.queue import PcmQueue
from appliance.bot.engine import Action, Clock, FlowEngine, Hangup, Listen, Say, StartRecording, Transfer
from appliance.bot.flow import Flow
from appliance.bot.records import CallRecorder, CallStore, Summarizer, summarize
from appliance.bot.upstream import Answerer
from appliance.calls import CallApp, CallAppFactory, CallControl
from appliance.sessions import EventRelay
from appliance.voice.asr import AsrOptions
from appliance.voice.conversation import Conversation, OutEvent, Speech
from appliance.voice.listener import Transcript
from appliance.voice.stack import VoiceStack

log = logging.getLogger(__name__)
RATE = ASR_RATE


class FlowCallApp:
    def __init__(self, stack: VoiceStack, flow: Flow, control: CallControl, speaker: PcmQueue, rate: int,
                 store: CallStore | None = None, llm: Answerer | None = None, summarizer: Summarizer | None = None,
                 record_audio: bool = False, on_event: Callable[[dict[str, Any]], None] | None = None,
                 clock: Clock | None = None) -> None:
        self.flow, self.control, self.speaker, self.store = flow, control, speaker, store
        self.summarizer = summarizer
        info = control.info
        timing = {"clock": clock} if clock is not None else {}  # the business hours' "now" (tests pin it)
        self.engine = FlowEngine(flow, llm=llm, call_id=info.call_id, caller=info.caller, **timing)
        self.on_event = on_event
        self.relay = EventRelay("echo", speaker, self._event)
        options = AsrOptions(language=flow.language)
        self.conversation = Conversation(lambda emit: stack.listener(options, emit, partials=False),
                                         stack.tts(flow.language, rate),
                                         self._respond, self._output, barge_in=True)
        self.rate = rate
        self._started = asyncio.get_running_loop().time()
        self._actions: asyncio.Queue[Callable[[], Awaitable[list[Action]]]] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._listen: Listen | None = None
        self._voicemail: list[np.ndarray] | None = None
        self._voicemail_done = asyncio.Event()
        self._recorder: CallRecorder | None = None
        if record_audio and store is not None:
            self._recorder = CallRecorder(store.call_dir(info.call_id) / "call.wav", rate=RATE)
            self.engine.record.recording = "call.wav"

    # ---- CallApp

    async def answered(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"flow-{self.control.info.call_id}")
        self._actions.put_nowait(self.engine.start)

    async def feed(self, samples: np.ndarray) -> None:
        if self._voicemail is not None:
            self._voicemail.append(samples)
        if self._recorder is not None:
            self._recorder.inbound(float_to_int16(samples), self._since_start())
        await self.conversation.feed(samples)

    async def dtmf(self, digit: str) -> None:
        self._restart_timer()
        if self._voicemail is not None:
            if digit == "#":
                self._voicemail_done.set()
            return
        await self.conversation.interrupt()  # a key pressed during a prompt answers it: stop talking
        self._actions.put_nowait(lambda: self.engine.on_dtmf(digit))

    async def close(self) -> None:
        for task in (self._timer, self._runner):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._voicemail_done.set()
        await self.conversation.close()
        await self.relay.close()
        record = self.engine.end("abandoned")
        if self.store is None:
            return
        try:
            if self._recorder is not None:
                await asyncio.to_thread(self._recorder.close)
            record.summary = await summarize(record, self.summarizer)
            await asyncio.to_thread(self.store.save, record)
            await asyncio.to_thread(self.store.prune)
        except Exception as exc:  # a full disk must not turn a finished call into a crash
            log.warning("call %s: its record was not saved: %s", record.call_id, exc)

    # ---- what the listener hears

    async def _respond(self, transcript: Transcript) -> str | None:
        if transcript.final and transcript.text.strip() and self._voicemail is None:
            self._actions.put_nowait(lambda: self.engine.on_speech(transcript.text))
        return None  # the engine's Say actions speak, in order with the rest

    async def _output(self, event: OutEvent) -> None:
        if isinstance(event, Speech) and self._recorder is not None and self.rate == RATE:
            self._recorder.outbound(float_to_int16(event.chunk.audio), self._since_start())
        await self.relay(event)

    def _since_start(self) -> float:
        return asyncio.get_running_loop().time() - self._started

    def _event(self, event: dict[str, Any]) -> None:
        if event["type"] == "speech_started":
            self._restart_timer()
        if self.on_event is not None:
            self.on_event(event)

    # ---- carrying out actions

    async def _run(self) -> None:
        while True:
            make = await self._actions.get()
            try:
                actions = await make()
                await self._perform(actions)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad turn must not leave the caller in silence
                log.exception("call %s: the flow failed", self.control.info.call_id)
                await self.control.hangup("flow failed")
                return

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Say):
                self._stop_timer()
                await self.conversation.say(action.text)
            elif isinstance(action, Listen):
                self._listen = action
                self._timer = asyncio.create_task(self._no_input_after_playout(action))
            elif isinstance(action, Transfer):
                await self._played()
                if not await self.control.transfer(action.target):
                    await self._perform(await self.engine.on_transfer_failed())
            elif isinstance(action, StartRecording):
                await self._played()
                await self._record_voicemail(action)
            elif isinstance(action, Hangup):
                await self._played()
                await self.control.hangup(action.reason)

    async def _played(self) -> None:
        """Until everything said so far has been synthesised and played into the call."""
        await self.conversation.drained()
        await self.speaker.emptied()

    async def _no_input_after_playout(self, listen: Listen) -> None:
        await self._played()
        await asyncio.sleep(listen.timeout_s)
        self._timer = None
        self._actions.put_nowait(self.engine.on_no_input)

    def _restart_timer(self) -> None:
        if self._timer is not None and self._listen is not None:
            self._timer.cancel()
            self._timer = asyncio.create_task(self._no_input_after_playout(self._listen))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _record_voicemail(self, action: StartRecording) -> None:
        self._voicemail, self._voicemail_done = [], asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._voicemail_done.wait(), action.max_s)
        audio, self._voicemail = np.concatenate(self._voicemail or [np.zeros(0, np.float32)]), None
        if self.store is not None and audio.size:
            path = self.store.call_dir(self.control.info.call_id) / f"{action.kind}.wav"
            await asyncio.to_thread(sf.write, path, audio, RATE, subtype="PCM_16")
            self.engine.record.voicemail = path.name


def flow_app_factory(stack: VoiceStack, flow: Flow, store: CallStore | None = None, llm: Answerer | None = None,
                     summarizer: Summarizer | None = None, record_audio: bool = False) -> CallAppFactory:
    async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
        return FlowCallApp(stack, flow, control, speaker, rate, store, llm, summarizer, record_audio)
    return make
