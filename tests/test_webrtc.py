"""WebRTC with aiortc as the peer on this machine: captions and speech back, bad offers, and fifty peers that
come and go without leaking tasks or memory."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer as Server
from appliance.audio import read_audio
from appliance.bench.text import normalise
from appliance.config.settings import ApiSettings
from appliance.sessions import SessionSpec
from appliance.voice.conversation import Conversation
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from appliance.webrtc.client import RATE, PcmSource, call
from appliance.webrtc.peer import WebRtcSession

EN = Path("/usr/share/asterisk/sounds/en")
ES = Path("/usr/share/asterisk/sounds/es")


@pytest.fixture(scope="module")
def rtc_api(stack: VoiceStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    keys = KeyStore(tmp_path_factory.mktemp("rtckeys") / "keys.json")
    _, token = keys.create("rtc")
    services = ApiServices(ApiSettings(max_sessions=60, rate_per_minute=1000), keys, VoiceModels.of(stack), list)
    with Server(services) as server:
        yield server.url, token


def metrics(rtc_api: tuple[str, str]) -> dict[str, float]:
    url, token = rtc_api
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def wav48(path: Path) -> np.ndarray:
    return read_audio(path, RATE).samples


def test_echo_over_webrtc_captions_and_speaks(rtc_api: tuple[str, str]) -> None:
    url, token = rtc_api
    audio = wav48(EN / "agent-alreadyon.wav")
    result = asyncio.run(call(url, token, {"mode": "echo", "language": "en"}, audio, tail_s=8))
    finals = " ".join(result.captions())
    assert "agent number" in normalise(finals)
    spoken = [e for _, e in result.events if e["type"] == "audio"]
    assert spoken and "agent" in normalise(" ".join(e["text"] for e in spoken))
    states = [e["state"] for _, e in result.events if e["type"] == "state"]
    assert states[0] == "thinking" and "speaking" in states and states[-1] == "listening"
    assert states[states.index("speaking") - 1] == "thinking"
    assert result.marked_at is not None
    first = result.first_sound_after(result.marked_at)
    assert first is not None, "no synthesised speech came back on the audio track"
    sound = result.received()
    assert np.abs(sound).max() > 0.05 and (np.abs(sound) > 0.01).sum() > RATE // 2  # half a second of voice


def test_interpretation_over_webrtc(rtc_api: tuple[str, str]) -> None:
    url, token = rtc_api
    audio = wav48(ES / "agent-alreadyon.wav")
    result = asyncio.run(call(url, token, {"mode": "interpret", "language": "es", "target": "en"}, audio, tail_s=5))
    finals = [e for _, e in result.events if e["type"] == "caption" and e["final"]]
    assert finals and "agent" in str(finals[-1]["target"]).lower()
    assert (np.abs(result.received()) > 0.01).sum() > RATE // 2  # English speech came back on the track


def offer_sdp(video_only: bool = False) -> str:
    return asyncio.run(_offer_sdp("video" if video_only else "audio"))


@pytest.mark.parametrize(("body", "message"), [
    ({"sdp": "this is not SDP", "type": "offer"}, "invalid SDP offer"),
    ({"sdp": "", "type": "offer"}, "empty"),
    ({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
      "type": "offer"}, "invalid SDP offer"),
    ({"sdp": "VIDEO", "type": "offer"}, "no audio"),
    ({"sdp": "AUDIO", "type": "answer"}, "expected an SDP offer"),
    ({"sdp": "AUDIO", "type": "offer", "mode": "interpret", "language": "en", "target": "xx"}, "xx"),
])
def test_bad_offers_get_400_with_the_reason(rtc_api: tuple[str, str], body: dict[str, str], message: str) -> None:
    url, token = rtc_api
    if body["sdp"] in ("VIDEO", "AUDIO"):
        body = {**body, "sdp": offer_sdp(video_only=body["sdp"] == "VIDEO")}
    reply = httpx.post(url + "/v1/webrtc/offer", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    assert metrics(rtc_api)["appliance_webrtc_sessions"] == 0


def test_signalling_needs_a_key(rtc_api: tuple[str, str]) -> None:
    url, _ = rtc_api
    assert httpx.post(url + "/v1/webrtc/offer", json={"sdp": offer_sdp()}, timeout=10).status_code == 401
    reply = httpx.post(url + "/v1/webrtc/offer", json={"sdp": offer_sdp()}, timeout=10,
                       headers={"Authorization": "Bearer ak_wrong_key"})
    assert reply.status_code == 401


def test_sixty_vanishing_peers_leak_nothing(rtc_api: tuple[str, str]) -> None:
    """Sixty peers, ten at a time, connect, speak and close without hanging up: every session object and
    task is freed and resident memory stays flat. (Fifty Opus sessions at once in one Python process are more
    than two cores can encode in real time; ten at a time keep ICE consent alive.)"""
    url, token = rtc_api
    audio = wav48(EN / "agent-alreadyon.wav")[: RATE // 2]
    async def batch(n: int) -> None:
        pcs = []
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for _ in range(n):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pc.createDataChannel("events")
                pc.addTrack(PcmSource(audio))
                await pc.setLocalDescription(await pc.createOffer())
                reply = await http.post("/v1/webrtc/offer", json={"mode": "echo", "sdp": pc.localDescription.sdp})
                assert reply.status_code == 200, reply.text
                await pc.setRemoteDescription(RTCSessionDescription(reply.json()["sdp"], "answer"))
                pcs.append(pc)
            await asyncio.sleep(2)
            assert [pc.connectionState for pc in pcs] == ["connected"] * n
            assert metrics(rtc_api)["appliance_webrtc_sessions"] == n
            for pc in pcs:  # no DELETE: the peer just goes
                await pc.close()

    def settle() -> dict[str, float]:
        assert asyncio.run(_wait_for(lambda: metrics(rtc_api)["appliance_webrtc_sessions"] == 0, 20)), \
            "sessions of vanished peers were not freed"
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS shows what is still held
        return metrics(rtc_api)

    # The first twenty warm what is shared (schedulers, voices, codec pools, allocator arenas): not a leak.
    asyncio.run(batch(10))
    asyncio.run(batch(10))
    before = settle()
    for _ in range(4):
        asyncio.run(batch(10))
    after = settle()
    alive = [o for o in gc.get_objects() if isinstance(o, WebRtcSession | Conversation | RTCPeerConnection)]
    assert not alive, f"{len(alive)} session objects outlived their peers"
    assert after["appliance_event_loop_tasks"] <= before["appliance_event_loop_tasks"]
    grown_mb = (after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]) / 2**20
    # ten live sessions (both ends) take ~100 MB here, so a leak of whole sessions would show many times over
    assert grown_mb < 50, f"resident memory grew by {grown_mb:.0f} MB over 40 sessions"
    # and it still serves
    result = asyncio.run(call(url, token, {"mode": "transcribe"}, wav48(EN / "agent-alreadyon.wav"), tail_s=2))
    assert "agent number" in normalise(" ".join(result.captions()))


async def _wait_for(condition: object, timeout_s: float) -> bool:
    assert callable(condition)
    for _ in range(int(timeout_s * 10)):
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.1)
    return False


def test_bench_api_measures_both_paths(stack: VoiceStack) -> None:
    from appliance.bench.api import run

    steps: list[str] = []
    results = run(stack, limit=1, requests=2, progress=steps.append)
    assert [r["clients"] for r in results["transcriptions"]] == [1, 4, 8]
    assert all(r["failed"] == 0 and r["req_per_s"] > 0 for r in results["transcriptions"])
    assert results["webrtc_echo"]["n"] == 1 and results["direct_echo"]["n"] == 1
    assert results["webrtc_echo"]["p50_ms"] > 0 and "webrtc_vs_direct_p50" in results
    assert len(steps) == 3 * 2 + 2


def test_offers_beyond_capacity_get_503(stack: VoiceStack) -> None:
    from appliance.webrtc.hub import CapacityError, WebRtcHub

    async def scenario() -> None:
        hub = WebRtcHub(max_sessions=1)
        spec = SessionSpec(mode="transcribe")
        first = await hub.offer(stack, spec, await _offer_sdp(), "offer")
        with pytest.raises(CapacityError, match="all 1 sessions are in use"):
            await hub.offer(stack, spec, await _offer_sdp(), "offer")
        assert list(hub.sessions) == [first.id]
        await hub.close_all()
        assert not hub.sessions

    asyncio.run(scenario())


async def _offer_sdp(kind: str = "audio") -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(kind)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_the_receivers_buffer_passes_each_packet_on_as_it_arrives() -> None:
    """ArrivalBuffer: the next packet in sequence is a frame at once (aiortc's own buffer waits for the one
    after it); a duplicate or a packet older than one passed on is dropped; the 16-bit sequence wraps."""
    from aiortc.rtp import RtpPacket

    from appliance.webrtc.media import ArrivalBuffer

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        p._data = bytes([seq % 256])  # type: ignore[attr-defined]  # what the receiver's depayloader sets
        return p

    buffer = ArrivalBuffer()
    passed = []
    for seq in (65533, 65534, 65534, 65535, 1, 0, 2, 65535, 3):  # a duplicate; 0 after 1 (reordered); an old one
        _, frame = buffer.add(packet(seq))
        passed.append(None if frame is None else (frame.timestamp // 960, frame.data))
    assert passed == [(65533, b"\xfd"), (65534, b"\xfe"), None, (65535, b"\xff"), (1, b"\x01"), None, (2, b"\x02"),
                      None, (3, b"\x03")]
