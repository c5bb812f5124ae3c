"""The appliance's phone with real softphones and a real registrar on loopback: baresip calls in and hears the
example flow's greeting (its recording is transcribed back), the appliance registers at Kamailio with digest
(MD5 and SHA-256) and calls baresip through it, answering Kamailio's proxy challenge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from appliance.audio import read_audio
from appliance.audio.resample import resample
from appliance.bench.text import normalise
from appliance.bot.calls import announcement_factory
from appliance.bot.routing import FlowRouter
from appliance.config.settings import BotSettings
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.sip.digest import DigestClient
from appliance.sip.outbound import Registration
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.asr import AsrOptions
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from tests.support.peers import BARESIP, KAMAILIO, Account, Baresip, Kamailio

PROMPT = Path("/usr/share/asterisk/sounds/en/agent-alreadyon.wav")
needs_peers = pytest.mark.skipif(BARESIP is None or KAMAILIO is None,
                                 reason="needs baresip and kamailio (Debian baresip-core, kamailio; make test)")


def heard(stack: VoiceStack, recording: Path) -> str:
    audio, rate = sf.read(recording, dtype="float32")
    audio = audio if audio.ndim == 1 else audio.mean(axis=1)
    asr = stack.asr[stack.asr_model("en", "transcribe")]
    return normalise(asr.transcribe(resample(audio, rate, 16000), AsrOptions(language="en")).text)


def phone_options() -> PhoneOptions:
    return PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(31000, 31200))


@needs_peers
def test_baresip_calls_in_and_hears_the_bot(stack: VoiceStack, tmp_path: Path) -> None:
    router = FlowRouter(BotSettings(records_dir=tmp_path / "calls"), Routes(UpstreamSettings()), VoiceModels.of(stack))

    async def run() -> Path:
        phone = Phone(phone_options(), router)
        await phone.start()
        try:
            silence = tmp_path / "silence.wav"  # a quiet caller: the greeting is not interrupted
            sf.write(silence, np.zeros(16000 * 14, np.int16), 16000)
            with Baresip(tmp_path / "baresip", silence, Account(codecs=("G722",))) as softphone:
                softphone.dial(f"sip:reception@127.0.0.1:{phone.agent.port}")
                await asyncio.to_thread(softphone.wait_event, "CALL_ESTABLISHED", 10)
                closed = await asyncio.to_thread(softphone.wait_event, "CALL_CLOSED", 30)
                assert "end of file" in closed.get("param", "")  # baresip hung up: its source ended
                [recording] = softphone.recordings()
            for _ in range(50):  # its BYE ends the call here
                if not phone.calls:
                    break
                await asyncio.sleep(0.1)
            assert phone.stats.ended == {"caller hung up": 1}
            return recording
        finally:
            await phone.stop()

    recording = asyncio.run(run())
    text = heard(stack, recording)  # the example flow's greeting, through G.722 both ways
    assert "thank you for calling" in text and "example company" in text and "opening hours" in text, text
    [record] = list(router.store.records())
    greeting = next(t for t in record.turns if t.who == "bot")
    assert "thank you for calling" in greeting.text and record.outcome in ("abandoned", "voicemail")  # open or not


@needs_peers
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_registers_at_kamailio_with_digest(tmp_path: Path, algorithm: str) -> None:
    async def run() -> None:
        with Kamailio(tmp_path / "kamailio", {"appliance": "s3cret"}, algorithm=algorithm) as kamailio:
            phone = Phone(phone_options(), lambda info: None)
            await phone.start()
            try:
                wrong = Registration(phone.agent, "bad", kamailio.uri, "appliance", "wrong")
                assert (await wrong.register()).status in (401, 403) and not wrong.state.registered
                account = Registration(phone.agent, "main", kamailio.uri, "appliance", "s3cret", expires_s=120)
                response = await account.register()
                assert response.status == 200, response.reason
                assert account.state.registered and account.state.expires_at
                account.start()  # the refresh loop; stop() unregisters
                await account.stop()
                assert not account.state.registered
            finally:
                await phone.stop()

    asyncio.run(run())


@needs_peers
def test_calls_baresip_through_kamailio_with_proxy_auth(stack: VoiceStack, tmp_path: Path) -> None:
    sentence = "Your table for four is booked for Friday at eight."

    async def run() -> Path:
        users = {"appliance": "pw-app", "bob": "pw-bob"}
        with Kamailio(tmp_path / "kamailio", users, auth_calls=True, qop="auth") as kamailio:
            silence = tmp_path / "silence.wav"
            sf.write(silence, np.zeros(8000 * 12, np.int16), 8000)
            bob = Account("bob", f"127.0.0.1:{kamailio.port}", "pw-bob", register=True, answer="auto",
                          codecs=("PCMU",))
            with Baresip(tmp_path / "baresip", silence, bob) as softphone:
                await asyncio.to_thread(softphone.wait_registered, 10)
                phone = Phone(phone_options(), lambda info: None)
                await phone.start()
                try:
                    call = await phone.call(f"sip:bob@127.0.0.1:{kamailio.port}",
                                            announcement_factory(stack, sentence), user="appliance",
                                            digest=DigestClient("appliance", "pw-app"))
                    assert call.dialog.route_set  # Kamailio record-routes: the BYE goes through it
                    reason = await asyncio.wait_for(call.ended, 30)
                    assert reason == "announcement played"
                    await asyncio.to_thread(softphone.wait_event, "CALL_CLOSED", 10)
                    [recording] = softphone.recordings()
                finally:
                    await phone.stop()
            assert "ERROR" not in kamailio.log_text()
            return recording

    recording = asyncio.run(run())
    text = heard(stack, recording)
    assert "table" in text and "friday" in text, text  # tiny.en on PCMU speech, on a loaded machine
    assert len(read_audio(recording, 16000).samples) > 16000  # more than a second of it
