"""The shipped example flow answering SIPp calls on loopback: a key menu to the opening hours and a goodbye (the
bot hangs up), a transfer to a person by REFER with the caller's NOTIFY, a voicemail left by speaking, and a
call beyond capacity turned away with 503 and Retry-After."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from appliance.audio import read_audio
from appliance.bench.pcap import write_rtp_pcap
from appliance.bot.flow import EXAMPLE_FLOW
from appliance.bot.records import CallStore
from appliance.bot.routing import FlowRouter
from appliance.calls import CallInfo
from appliance.config.settings import BotSettings
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.sip.message import Response, parse
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from tests.support.sipp import EN, sipp

SCENARIOS = Path(__file__).parent / "fixtures" / "sip"
DTMF = Path("/usr/share/sip-tester")
pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="needs sipp (sip-tester; make test)")


def always_open(tmp: Path) -> Path:
    """The example flow without its timetable, so the test takes the same path at any hour."""
    text = EXAMPLE_FLOW.read_text()
    start = text.index("business_hours:")
    text = text[:start] + text[text.index("\n\n", start) + 2:]
    text = text.replace("say: We are open {opening_hours}. We are closed on public holidays.",
                        "say: We are open every day from nine to five.")
    text = text.replace("closed:\n    say: >-\n      We are closed at the moment. We are open {opening_hours}.",
                        "closed:\n    say: >-\n      We are closed at the moment.")
    path = tmp / "flow.yaml"
    path.write_text(text)
    return path


def keys(*presses: tuple[float, str]) -> str:
    """SIPp elements pressing each key (a capture of RFC 4733 packets) after a pause in seconds."""
    out = []
    for pause, key in presses:
        name = {"#": "pound", "*": "star"}.get(key, key)
        out.append(f'  <pause milliseconds="{int(pause * 1000)}"/>\n'
                   f'  <nop><action><exec play_pcap_audio="{DTMF / f"dtmf_2833_{name}.pcap"}"/></action></nop>')
    return "\n".join(out)


def speak(tmp: Path, pause: float, prompt: str) -> str:
    """SIPp elements speaking a prompt after a pause; the scenario goes on while it plays."""
    pcm = read_audio(EN / f"{prompt}.wav", 8000).samples
    write_rtp_pcap(tmp / f"{prompt}.pcap", np.concatenate([pcm, np.zeros(8000, np.float32)]))
    return (f'  <pause milliseconds="{int(pause * 1000)}"/>\n'
            f'  <nop><action><exec play_pcap_audio="{tmp / f"{prompt}.pcap"}"/></action></nop>')


def scenario(tmp: Path, name: str, steps: str) -> Path:
    path = tmp / f"{name}.xml"
    path.write_text((SCENARIOS / f"{name}.xml").read_text().replace("@KEYS@", steps))
    return path


def run_calls(stack: VoiceStack, tmp: Path, script: Path, options: PhoneOptions | None = None,
              during: Any = None) -> tuple[Phone, CallStore]:
    settings = BotSettings(flow=always_open(tmp), records_dir=tmp / "calls", variables={"agent": "sip:200@127.0.0.1"},
                           record_audio=True)
    router = FlowRouter(settings, Routes(UpstreamSettings()), VoiceModels.of(stack))

    async def run() -> Phone:
        phone = Phone(options or PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(32000, 32200)), router)
        await phone.start()
        try:
            call = asyncio.create_task(sipp(script, phone.agent.port))
            if during is not None:
                await during(phone)
            code, err = await call
            assert code == 0, err
            for _ in range(100):
                if not phone.calls:
                    break
                await asyncio.sleep(0.05)
            return phone
        finally:
            await phone.stop()

    return asyncio.run(run()), router.store


def test_menu_by_keys_then_the_bot_says_goodbye_and_hangs_up(stack: VoiceStack, tmp_path: Path) -> None:
    script = scenario(tmp_path, "uac_menu", keys((3.0, "1"), (6.0, "2")))  # hours; anything else? no
    phone, store = run_calls(stack, tmp_path, script)
    assert phone.stats.ended == {"completed": 1}
    [record] = list(store.records())
    assert record.outcome == "completed" and record.steps[:3] == ["main", "hours", "anything_else"]
    assert record.steps[-1] == "goodbye" and [t.text for t in record.turns if t.kind == "dtmf"] == ["1", "2"]
    said = " ".join(t.text for t in record.turns if t.who == "bot")
    assert "open every day" in said and "Goodbye" in said and record.summary
    audio, rate = sf.read(store.call_dir(record.call_id) / str(record.recording))
    assert rate == 16000 and audio.shape[1] == 2 and len(audio) / rate > 8  # caller left, bot right
    assert np.abs(audio[:, 1]).max() > 0.1 and np.abs(audio[:, 0]).max() < 0.01  # the caller only pressed keys


def test_asking_for_a_person_transfers_with_refer(stack: VoiceStack, tmp_path: Path) -> None:
    script = scenario(tmp_path, "uac_transfer", speak(tmp_path, 2.0, "agent-user"))  # "agent ..." by voice
    phone, store = run_calls(stack, tmp_path, script)
    assert phone.stats.ended == {"transferred": 1}
    [record] = list(store.records())
    assert record.outcome == "transferred" and "agent" in record.steps


def test_beyond_capacity_a_call_gets_503_with_retry_after(stack: VoiceStack, tmp_path: Path) -> None:
    script = scenario(tmp_path, "uac_menu", keys((4.0, "2"), (14.0, "#")))  # a (silent) message, ended by #

    async def second_call(phone: Phone) -> None:
        for _ in range(100):
            if phone.calls:
                break
            await asyncio.sleep(0.05)
        assert phone.calls
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        port = sock.getsockname()[1]
        invite = (f"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKcap;rport\r\n"
                  f"From: <sip:x@127.0.0.1>;tag=9\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: cap@x\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:x@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(invite.encode(), ("127.0.0.1", phone.agent.port))
        answers = []
        while True:
            answer = parse(await asyncio.to_thread(sock.recv, 65535))
            assert isinstance(answer, Response)
            answers.append(answer)
            if answer.status >= 200:
                break
        sock.close()
        assert answers[-1].status == 503 and answers[-1].get("Retry-After") == "10"

    phone, store = run_calls(stack, tmp_path, script,
                             PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(32000, 32200), max_calls=1),
                             second_call)
    assert phone.stats.rejected_busy == 1 and phone.stats.answered == 1
    [record] = list(store.records())
    assert record.outcome == "voicemail"


def test_router_is_what_the_phone_calls(stack: VoiceStack, tmp_path: Path) -> None:
    router = FlowRouter(BotSettings(records_dir=tmp_path), Routes(UpstreamSettings()), VoiceModels.of(stack))
    assert router(CallInfo("c", "sip:a@b", "anything")) is not None and router.default.name == "example"
