"""Calls with SIPp as the caller on loopback: a real prompt spoken over RTP reaches the voice core, a key press
arrives as RFC 4733, the bot's answer goes back as RTP; capacity turns calls away with 503 + Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.audio.queue import PcmQueue
from appliance.bench.text import normalise
from appliance.bot.calls import ModeCallApp
from appliance.calls import CallApp, CallControl, CallInfo
from appliance.sessions import SessionSpec
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.stack import VoiceStack
from tests.support.sipp import SIPP, scenario, sipp

pytestmark = pytest.mark.skipif(SIPP is None, reason="needs sipp (Debian sip-tester, installed by make test)")


class RecordingApp(ModeCallApp):
    """The echo bot, keeping what it heard and was told for the test to check."""

    def __init__(self, stack: VoiceStack, speaker: PcmQueue, rate: int, log: dict[str, Any]) -> None:
        super().__init__(stack, SessionSpec(mode="echo"), speaker, rate, log.setdefault("events", []).append)
        self.log = log

    async def answered(self) -> None:
        self.log["answered"] = True

    async def dtmf(self, digit: str) -> None:
        self.log.setdefault("digits", []).append(digit)


def test_sipp_call_speaks_to_the_echo_bot(stack: VoiceStack, tmp_path: Path) -> None:
    logs: list[dict[str, Any]] = []

    def route(info: CallInfo) -> Any:
        async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
            logs.append({"info": info})
            return RecordingApp(stack, speaker, rate, logs[-1])
        return make if info.called == "bot" else None

    async def run() -> None:
        phone = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(30000, 30100)), route)
        await phone.start()
        try:
            code, err = await sipp(scenario(tmp_path, "agent-alreadyon", 5000), phone.agent.port)
            assert code == 0, err
            assert not phone.calls and phone.stats.ended == {"caller hung up": 1}
        finally:
            await phone.stop()

    asyncio.run(run())
    [log] = logs
    assert log["answered"] and log["digits"] == ["1"]
    events = log["events"]
    finals = " ".join(e["source"] for e in events if e["type"] == "caption" and e["final"])
    assert "agent" in normalise(finals) and "logged on" in normalise(finals), events
    states = [e["state"] for e in events if e["type"] == "state"]
    assert "speaking" in states and "listening" in states[states.index("speaking"):], states  # played out
