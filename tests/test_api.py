"""The HTTP API with real clients on loopback: the `openai` SDK unchanged, keys, limits, bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer
from appliance.audio import read_audio, wav_bytes
from appliance.bench.text import normalise
from appliance.config.settings import ApiSettings
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack

EN = Path("/usr/share/asterisk/sounds/en")
ES = Path("/usr/share/asterisk/sounds/es")


Server = ThreadedServer


@pytest.fixture(scope="module")
def api(stack: VoiceStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, KeyStore, str]]:
    keys = KeyStore(tmp_path_factory.mktemp("keys") / "keys.json")
    _, token = keys.create("tests")
    settings = ApiSettings(max_upload_mb=2, rate_per_minute=1000)
    services = ApiServices(settings, keys, VoiceModels.of(stack), lambda: ["whisper-tiny-en", "whisper-base"])
    with Server(services) as server:
        yield server, keys, token


def client(api: tuple[Server, KeyStore, str]) -> openai.OpenAI:
    server, _, token = api
    return openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0, timeout=120)


def test_openai_sdk_transcribes_and_translates(api: tuple[Server, KeyStore, str]) -> None:
    sdk = client(api)
    with (EN / "agent-alreadyon.wav").open("rb") as fh:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=fh, language="en")
    assert "agent number" in normalise(result.text)
    with (EN / "agent-alreadyon.wav").open("rb") as fh:
        verbose = sdk.audio.transcriptions.create(model="whisper-1", file=fh, response_format="verbose_json")
    assert verbose.language == "en" and verbose.duration > 5 and verbose.segments
    with (ES / "agent-alreadyon.wav").open("rb") as fh:
        english = sdk.audio.translations.create(model="whisper-1", file=fh)
    assert "agent" in normalise(english.text)


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(api: tuple[Server, KeyStore, str], fmt: str) -> None:
    with (EN / "vm-goodbye.wav").open("rb") as fh:
        out = client(api).audio.transcriptions.create(model="whisper-1", file=fh, response_format=fmt)
    text = str(out)
    assert "goodbye" in text.lower().replace(" ", "")
    if fmt == "srt":
        assert "00:00:00," in text and "-->" in text
    if fmt == "vtt":
        assert text.startswith("WEBVTT")


def test_speech_streams_a_wav(api: tuple[Server, KeyStore, str], stack: VoiceStack) -> None:
    response = client(api).audio.speech.create(model="tts-1", voice="alloy", input="Hello, how can I help you?",
                                               response_format="wav")
    audio = read_audio(io.BytesIO(response.read()), 16000)
    assert audio.duration > 1.0
    heard = stack.asr["whisper-tiny-en"].transcribe(audio.samples).text
    assert "help" in normalise(heard)
    pcm = client(api).audio.speech.create(model="tts-1", voice="alloy", input="Goodbye.", response_format="pcm")
    assert len(pcm.read()) > 24000  # over half a second at 24 kHz, 16-bit


def test_models_lists_what_the_device_has(api: tuple[Server, KeyStore, str]) -> None:
    ids = [m.id for m in client(api).models.list()]
    assert {"whisper-1", "tts-1", "whisper-tiny-en"} <= set(ids)


def test_keys_are_required_and_revocable(api: tuple[Server, KeyStore, str]) -> None:
    server, keys, _ = api
    assert httpx.get(server.url + "/health").status_code == 200
    missing = httpx.get(server.url + "/v1/models")
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer ak_nope_nope"})
    assert wrong.status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    assert httpx.get(server.url + "/docs").status_code == 404
    key, token = keys.create("to revoke")
    ok = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "appliance_http_requests" in ok.text
    keys.revoke(key.id)
    revoked = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 403 and key.id in revoked.json()["error"]["message"]
    assert token not in keys.path.read_text()  # only hashes are stored


def test_bad_uploads(api: tuple[Server, KeyStore, str]) -> None:
    sdk = client(api)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"this is not audio" * 10))
    assert "notes.wav" in str(err.value)
    big = wav_bytes(np.zeros(16000 * 80, np.float32), 16000)  # 2.4 MiB > the 2 MiB limit of this server
    with pytest.raises(openai.APIStatusError) as err:
        sdk.audio.transcriptions.create(model="whisper-1", file=("big.wav", big))
    assert err.value.status_code == 413 and "2 MiB" in str(err.value)
    rate44 = wav_bytes(read_audio(EN / "vm-goodbye.wav", 44100).samples, 44100)  # wrong rate: resampled
    out = sdk.audio.transcriptions.create(model="whisper-1", file=("goodbye.wav", rate44))
    assert "goodbye" in out.text.lower().replace(" ", "")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        sdk.audio.transcriptions.create(model="whisper-1", file=("g.wav", rate44), response_format="mp3")  # type: ignore[arg-type]


def test_rate_limit_answers_429_with_retry_after(stack: VoiceStack, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    _, token = keys.create("busy")
    services = ApiServices(ApiSettings(rate_per_minute=3), keys, VoiceModels.of(stack), list)
    with Server(services) as server:
        codes = [httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code
                 for _ in range(5)]
        last = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert codes[:3] == [200, 200, 200] and 429 in codes
    assert last.status_code == 429 and int(last.headers["Retry-After"]) >= 1
