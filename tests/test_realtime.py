"""The realtime WebSocket with a real client on loopback: interpretation, echo audio, garbage, keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer as Server
from appliance.audio import read_audio
from appliance.config.settings import ApiSettings
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack

ES = Path("/usr/share/asterisk/sounds/es")
EN = Path("/usr/share/asterisk/sounds/en")


SERVICES: list[ApiServices] = []


@pytest.fixture(scope="module")
def ws_api(stack: VoiceStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    keys = KeyStore(tmp_path_factory.mktemp("wskeys") / "keys.json")
    _, token = keys.create("ws")
    services = ApiServices(ApiSettings(), keys, VoiceModels.of(stack), list)
    SERVICES[:] = [services]
    with Server(services) as server:
        yield server.url.replace("http", "ws") + "/v1/stream", token


def open_ws(ws_api: tuple[str, str]) -> ClientConnection:
    url, token = ws_api
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)


def stream_file(ws: ClientConnection, path: Path, rate: int) -> None:
    pcm = (read_audio(path, rate).samples * 32767).astype("<i2").tobytes()
    silence = bytes(rate // 5 * 2)
    for i in range(0, len(pcm), rate // 50 * 2):
        ws.send(pcm[i : i + rate // 50 * 2])
    for _ in range(5):
        ws.send(silence)
    ws.send(json.dumps({"type": "stop"}))


def events_until_done(ws: ClientConnection) -> tuple[list[dict[str, object]], list[bytes]]:
    events, audio = [], []
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            audio.append(message)
            continue
        event = json.loads(message)
        events.append(event)
        if event["type"] == "done":
            return events, audio


def test_interpretation_over_websocket(ws_api: tuple[str, str]) -> None:
    with open_ws(ws_api) as ws:
        ws.send(json.dumps({"type": "start", "mode": "interpret", "language": "es", "target": "en",
                            "sample_rate": 8000, "output_rate": 16000}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        stream_file(ws, ES / "agent-alreadyon.wav", 8000)  # telephone-rate audio, resampled on the device
        events, audio = events_until_done(ws)
    finals = [e for e in events if e["type"] == "caption" and e["final"]]
    assert finals and "agent" in str(finals[-1]["target"]).lower()
    assert any(e["type"] == "speech_started" for e in events)
    assert sum(len(a) for a in audio) > 16000 * 2  # more than a second of English speech came back


def test_echo_sends_audio_frames(ws_api: tuple[str, str]) -> None:
    with open_ws(ws_api) as ws:
        ws.send(json.dumps({"type": "start", "mode": "echo", "language": "en", "sample_rate": 16000,
                            "output_rate": 8000}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        stream_file(ws, EN / "vm-goodbye.wav", 16000)
        events, audio = events_until_done(ws)
    said = [e for e in events if e["type"] == "audio"]
    assert said and "goodbye" in " ".join(str(e["text"]) for e in said).lower().replace(" ", "")
    assert len(audio) == len(said) and all(len(a) % 2 == 0 for a in audio)


def test_garbage_gets_errors_and_the_socket_lives(ws_api: tuple[str, str]) -> None:
    with open_ws(ws_api) as ws:
        ws.send(b"\x00\x01" * 160)
        assert "start message before audio" in json.loads(ws.recv(timeout=10))["message"]
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps({"type": "start", "sample_rate": 3}))
        assert "sample_rate" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(json.dumps({"type": "start", "mode": "interpret", "language": "en", "target": "de"}))
        assert "supported" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(json.dumps({"type": "start", "mode": "transcribe", "language": "en"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(b"\x01\x02\x03")
        assert "16-bit PCM" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(np.zeros(320, "<i2").tobytes())
        ws.send(json.dumps({"type": "stop"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "done"


def test_websocket_needs_a_key(ws_api: tuple[str, str]) -> None:
    url, _ = ws_api
    with pytest.raises(InvalidStatus) as err:
        connect(url, open_timeout=10)
    assert err.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(url + "?access_token=ak_x_y", open_timeout=10)


def test_dropped_peers_free_their_sessions(ws_api: tuple[str, str]) -> None:
    """Fifty clients that vanish mid-stream: every session, task and (within a margin) megabyte is freed,
    and the server still serves."""
    import contextlib
    import ctypes
    import gc
    import socket
    import time

    def vanish(times: int) -> None:
        for _ in range(times):
            with contextlib.suppress(Exception), open_ws(ws_api) as ws:
                ws.send(json.dumps({"type": "start", "mode": "echo", "language": "en"}))
                ws.recv(timeout=10)
                ws.send(speech)
                ws.socket.shutdown(socket.SHUT_RDWR)  # the peer vanishes: no close frame

    def settled() -> dict[str, float]:
        deadline = time.monotonic() + 10
        while SERVICES[0].sessions._value.get() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        registry = SERVICES[0].registry
        return {"tasks": registry.get_sample_value("appliance_event_loop_tasks") or 0.0,
                "rss": (registry.get_sample_value("process_resident_memory_bytes") or 0.0) / 2**20}

    speech = (read_audio(EN / "agent-alreadyon.wav", 16000).samples[:16000] * 32767).astype("<i2").tobytes()
    vanish(10)  # warms what is shared
    before = settled()
    vanish(50)
    after = settled()
    assert after["rss"] - before["rss"] < 50, f"resident memory grew {after['rss'] - before['rss']:.0f} MB"
    with open_ws(ws_api) as ws:  # the server still serves
        ws.send(json.dumps({"type": "start", "mode": "transcribe"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    assert SERVICES[0].sessions._value.get() == 0
    assert 0 < after["tasks"] <= before["tasks"]


def test_the_kiosk_cookie_opens_a_socket_and_the_rate_limit_counts_sockets(stack: VoiceStack,
                                                                           tmp_path: Path) -> None:
    """The same authentication as every route (the kiosk's sign-in cookie included) and the same per-key limit."""
    keys = KeyStore(tmp_path / "keys.json")
    _, token = keys.create("kiosk")
    with Server(ApiServices(ApiSettings(rate_per_minute=2), keys, VoiceModels.of(stack), list)) as server:
        url = server.url.replace("http", "ws") + "/v1/stream"
        for _ in range(2):
            with connect(url, additional_headers={"Cookie": f"appliance_key={token}"}, open_timeout=10) as ws:
                ws.send(json.dumps({"type": "start", "mode": "transcribe", "language": "en"}))
                assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        with pytest.raises(InvalidStatus):  # the third socket within the minute: refused before it opens
            connect(url, additional_headers={"Cookie": f"appliance_key={token}"}, open_timeout=10)


def test_while_the_models_warm_a_socket_is_told_when_to_retry(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    _, token = keys.create("early")
    with Server(ApiServices(ApiSettings(), keys, VoiceModels(), list, standalone=False), warm=False) as server:
        url = server.url.replace("http", "ws") + "/v1/stream"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
            event = json.loads(ws.recv(timeout=10))
            assert event["type"] == "error" and event["retry_after"] == 5 and "still loading" in event["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
