"""The kiosk session on the device's own microphone and speaker: the same modes as the kiosk page, with
PortAudio streams in place of WebRTC tracks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from appliance.audio import ASR_RATE, AudioFrame, StreamResampler
from appliance.audio.queue import PcmQueue
from appliance.kiosk.sound import SoundDevice, SoundSystem
from appliance.sessions import EventRelay, SessionSpec, open_conversation
from appliance.voice.stack import VoiceStack

FRAME_S = 0.02
OnEvent = Callable[[dict[str, Any]], None]


async def run_local(stack: VoiceStack, spec: SessionSpec, sound: SoundSystem, mic: SoundDevice,
                    speaker_device: SoundDevice, on_event: OnEvent, stop: asyncio.Event) -> None:
    """Listen on ``mic`` and answer on ``speaker_device`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    in_rate = sound.rate_for(mic, "input", (ASR_RATE, 48000, 44100))
    out_rate = sound.rate_for(speaker_device, "output", (22050, 16000, 48000, 44100))
    heard: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
    speaker = PcmQueue()
    relay = EventRelay(spec.mode, speaker, on_event)

    def captured(data: bytes | None, frames: int, info: Any, status: int) -> tuple[None, int]:
        if data:
            loop.call_soon_threadsafe(_offer, heard, data)
        return None, sound.pyaudio.paContinue

    def playback(data: bytes | None, frames: int, info: Any, status: int) -> tuple[bytes, int]:
        return speaker.take(frames).tobytes(), sound.pyaudio.paContinue

    conversation = open_conversation(stack, spec, relay, out_rate)
    resampler = StreamResampler(in_rate, ASR_RATE, quality="QQ") if in_rate != ASR_RATE else None
    streams = [sound.open(mic, "input", in_rate, int(in_rate * FRAME_S), captured),
               sound.open(speaker_device, "output", out_rate, int(out_rate * FRAME_S), playback)]
    on_event({"type": "ready", "mode": spec.mode, "input": mic.name, "output": speaker_device.name,
                "input_rate": in_rate, "output_rate": out_rate})
    position = 0
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(heard.get(), timeout=0.2)
            except TimeoutError:
                continue
            frame = AudioFrame.from_bytes(data, in_rate, timestamp=position / in_rate)
            position += len(data) // 2
            ready = resampler.process(frame) if resampler is not None else frame
            if ready is not None:
                await conversation.feed(ready.to_float32())
    finally:
        for stream in streams:
            stream.stop_stream()
            stream.close()
        await conversation.close()
        await relay.close()


def _offer(queue: asyncio.Queue[bytes], data: bytes) -> None:
    if queue.full():  # the voice core fell behind real time: drop the oldest audio, never block PortAudio
        queue.get_nowait()
    queue.put_nowait(data)
