"""The HIL greeting call (hil/call.py) against the appliance's phone on loopback: SIPp calls over TCP as a
quiet caller, the recorder on the harness gets the example flow's greeting as RTP, and it transcribes back.
`make hil` makes the same call to a device image (QEMU in a loopback-only network namespace, or a board)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.resample import resample
from appliance.bench.text import normalise
from appliance.bot.routing import FlowRouter
from appliance.config.settings import BotSettings
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.asr import AsrOptions
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from hil.call import CallError, greeting_call
from tests.support.sipp import SIPP

needs_sipp = pytest.mark.skipif(SIPP is None, reason="needs sipp (Debian sip-tester; make test installs it)")


@needs_sipp
def test_the_greeting_call_hears_the_flow_greeting(stack: VoiceStack, tmp_path: Path) -> None:
    router = FlowRouter(BotSettings(records_dir=tmp_path / "calls"), Routes(UpstreamSettings()), VoiceModels.of(stack))

    async def run() -> np.ndarray:
        phone = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(31400, 31600)), router)
        await phone.start()
        try:
            return await asyncio.to_thread(greeting_call, ("127.0.0.1", phone.agent.port), "127.0.0.1", tmp_path,
                                           12)
        finally:
            await phone.stop()

    pcm = asyncio.run(run())
    assert len(pcm) > 8000 * 3, len(pcm)  # seconds of the device's voice, not a packet or two
    audio = resample(pcm.astype(np.float32) / 32768, 8000, 16000)
    asr = stack.asr[stack.asr_model("en", "transcribe")]
    text = normalise(asr.transcribe(audio, AsrOptions(language="en")).text)
    assert "thank you for calling" in text and "example company" in text, text


@needs_sipp
def test_a_greeting_call_to_nobody_says_what_sipp_said(tmp_path: Path) -> None:
    with pytest.raises(CallError, match="sipp exited"):
        greeting_call(("127.0.0.1", 9), "127.0.0.1", tmp_path, 2)
