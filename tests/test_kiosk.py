"""The kiosk page in a real browser: Debian's Chromium, headless, driven by Playwright, with a WAV of real
speech as its microphone. The page must sign in, call the device over WebRTC and show what the WAV says."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer as Server
from appliance.audio import read_audio, write_wav
from appliance.bench.text import normalise
from appliance.config.settings import ApiSettings
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack

EN = Path("/usr/share/asterisk/sounds/en")
ES = Path("/usr/share/asterisk/sounds/es")
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is installed by `make test`")


@pytest.fixture(scope="module")
def kiosk_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore(tmp_path_factory.mktemp("kioskkeys") / "keys.json")


@pytest.fixture(scope="module")
def kiosk_api(stack: VoiceStack, kiosk_keys: KeyStore) -> Iterator[tuple[str, str]]:
    keys = kiosk_keys
    _, token = keys.create("kiosk")
    services = ApiServices(ApiSettings(rate_per_minute=1000), keys, VoiceModels.of(stack), list)
    with Server(services) as server:
        yield server.url, token


def microphone(tmp_path: Path, prompt: Path) -> Path:
    """The prompt between silences, at 48 kHz: Chromium loops the file as its microphone."""
    speech = read_audio(prompt, 48000).samples
    quiet = np.zeros(48000, np.float32)
    path = tmp_path / "mic.wav"
    write_wav(path, np.concatenate([quiet, speech, quiet, quiet, quiet]), 48000)
    return path


def browse(url: str, mic: Path, actions: object, path: str = "/kiosk") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}",
            "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns"])
        try:
            page = browser.new_page()
            page.goto(url + path)
            assert callable(actions)
            actions(page)
        finally:
            browser.close()


def sign_in(page: object, token: str) -> None:
    page.fill("#key", "not-a-key")  # type: ignore[attr-defined]
    page.click("#signin")  # type: ignore[attr-defined]
    assert "not valid" in page.text_content("#error")  # type: ignore[attr-defined]
    page.fill("#key", token)  # type: ignore[attr-defined]
    page.click("#signin")  # type: ignore[attr-defined]
    page.wait_for_selector("#start")  # type: ignore[attr-defined]


def test_kiosk_shows_captions_of_the_microphone(kiosk_api: tuple[str, str], tmp_path: Path) -> None:
    url, token = kiosk_api

    def actions(page: object) -> None:
        sign_in(page, token)
        p = page  # type: ignore[assignment]
        p.select_option("#mode", "transcribe")  # type: ignore[attr-defined]
        assert p.eval_on_selector("#language", "e => e.value") == "en"  # the default, whatever pairs exist
        p.click("#start")  # type: ignore[attr-defined]
        p.wait_for_function("document.querySelector('#history').textContent.toLowerCase().includes('agent number')",
                            timeout=60_000)  # type: ignore[attr-defined]
        assert float(p.eval_on_selector("#level", "m => m.value") or 0) >= 0  # type: ignore[attr-defined]
        heard = normalise(p.text_content("#history"))  # type: ignore[attr-defined]
        assert "already logged on" in heard or "agent number" in heard
        p.click("#stop")  # type: ignore[attr-defined]
        assert p.text_content("#state") == "Ready"  # type: ignore[attr-defined]

    browse(url, microphone(tmp_path, EN / "agent-alreadyon.wav"), actions)


def test_kiosk_interprets_spanish_into_english(kiosk_api: tuple[str, str], tmp_path: Path) -> None:
    url, token = kiosk_api
    states: list[str] = []

    def actions(page: object) -> None:
        sign_in(page, token)
        p = page  # type: ignore[assignment]
        p.select_option("#mode", "interpret")  # type: ignore[attr-defined]
        p.select_option("#language", "es")  # type: ignore[attr-defined]
        p.select_option("#target", "en")  # type: ignore[attr-defined]
        p.click("#start")  # type: ignore[attr-defined]
        p.wait_for_function("document.querySelector('.turn .target') && "
                            "document.querySelector('#history').textContent.toLowerCase().includes('agent')",
                            timeout=90_000)  # type: ignore[attr-defined]
        states.append(p.get_attribute("body", "class"))  # type: ignore[attr-defined]
        p.wait_for_selector("body.speaking, body.listening", timeout=30_000)  # type: ignore[attr-defined]

    browse(url, microphone(tmp_path, ES / "agent-alreadyon.wav"), actions)
    assert states


def test_a_url_preset_survives_sign_in(kiosk_api: tuple[str, str], tmp_path: Path) -> None:
    url, token = kiosk_api
    preset = "/kiosk?mode=interpret&language=es&target=en"
    chosen: dict[str, str] = {}

    def actions(page: object) -> None:
        sign_in(page, token)  # a wrong key first, then the real one: the preset outlives both
        p = page  # type: ignore[assignment]
        p.wait_for_selector("body[data-ready]", timeout=30_000)  # type: ignore[attr-defined]
        assert p.url == url + preset  # type: ignore[attr-defined]
        for select in ("mode", "language", "target"):
            chosen[select] = p.eval_on_selector(f"#{select}", "s => s.value")  # type: ignore[attr-defined]
            chosen[select + " shown"] = p.eval_on_selector(  # type: ignore[attr-defined]
                f"#{select}", "s => s.selectedOptions[0] ? s.selectedOptions[0].textContent : ''")
        assert p.is_enabled("#start")  # type: ignore[attr-defined]
        assert p.text_content("#error") == ""  # type: ignore[attr-defined]

    browse(url, microphone(tmp_path, ES / "agent-alreadyon.wav"), actions, preset)
    assert chosen == {"mode": "interpret", "mode shown": "Interpretation", "language": "es",
                      "language shown": "Spanish", "target": "en", "target shown": "English"}


def test_sign_in_returns_only_to_the_kiosk_on_this_device(kiosk_api: tuple[str, str]) -> None:
    url, token = kiosk_api
    preset = "/kiosk?mode=interpret&language=es&target=en"
    form = httpx.get(url + preset, timeout=10).text
    assert 'name="next" id="next" value="/kiosk?mode=interpret&amp;language=es&amp;target=en"' in form
    with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as browser:
        back = browser.post("/kiosk/login", data={"key": token, "next": preset})
        assert back.status_code == 303 and back.headers["location"] == preset
        assert browser.post("/kiosk/login", data={"key": token}).headers["location"] == "/kiosk"
        for crafted in ("//evil.example/", "https://evil.example/", "https://evil.example/kiosk?mode=echo",
                        "/\\evil.example/", "\t//evil.example/", "///evil.example/", "/kiosk@evil.example",
                        "/kiosk/../evil", "javascript:alert(1)", "http://[::1"):
            signed = browser.post("/kiosk/login", data={"key": token, "next": crafted})
            assert signed.status_code == 303 and signed.headers["location"] == "/kiosk", crafted
            wrong = browser.post("/kiosk/login", data={"key": "ak_nope_nope", "next": crafted})
            assert wrong.status_code == 401 and 'id="next" value="/kiosk"' in wrong.text, crafted
        header = browser.post("/kiosk/login", data={"key": token, "next": "/kiosk?a=1\r\nSet-Cookie: x=1"})
        assert header.headers["location"].startswith("/kiosk?a=1") and "x=1" not in header.headers["set-cookie"]
        markup = browser.post("/kiosk/login", data={"key": "", "next": '/kiosk?x="><script>alert(1)</script>'})
        assert markup.status_code == 401 and "<script>alert" not in markup.text


def test_kiosk_needs_a_key(kiosk_api: tuple[str, str]) -> None:
    url, token = kiosk_api
    page = httpx.get(url + "/kiosk", timeout=10)
    assert page.status_code == 200 and 'name="key"' in page.text and "kiosk.js" not in page.text
    assert httpx.get(url + "/kiosk/static/kiosk.js", timeout=10).status_code == 401
    assert httpx.get(url + "/kiosk/config", timeout=10).status_code == 401
    wrong = httpx.post(url + "/kiosk/login", data={"key": "ak_nope_nope"}, timeout=10)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    with httpx.Client(base_url=url, timeout=10) as browser:
        signed = browser.post("/kiosk/login", data={"key": token})
        assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        assert "kiosk.js" in browser.get("/kiosk").text
        assert browser.get("/kiosk/static/kiosk.js").status_code == 200
        assert ["es", "en"] in browser.get("/kiosk/config").json()["pairs"]
        assert browser.get("/kiosk/static/..%2Fpeer.py").status_code == 404


def test_a_one_time_sign_in_link_opens_the_kiosk_in_the_browser_once(kiosk_api: tuple[str, str],
                                                                       kiosk_keys: KeyStore, tmp_path: Path) -> None:
    """What the device's own screen does at boot (`appliance keys link "kiosk screen"`): no key typed."""
    url, _ = kiosk_api
    earlier, _ = kiosk_keys.create("kiosk screen")
    code = kiosk_keys.create_link("kiosk screen", ttl_s=60)
    preset = "/kiosk?mode=transcribe&language=en"

    def lands_on_the_page(page: object) -> None:
        page.wait_for_selector("#start")  # type: ignore[attr-defined]
        assert page.url.endswith(preset), page.url  # type: ignore[attr-defined]

    browse(url, microphone(tmp_path, EN / "hello-world.wav"), lands_on_the_page,
           f"/kiosk/login?code={code}&next=%2Fkiosk%3Fmode%3Dtranscribe%26language%3Den")
    screens = [k for k in kiosk_keys.list() if k.name == "kiosk screen"]
    assert [k.id for k in screens if not k.revoked] != [earlier.id] and len(screens) == 2
    assert next(k for k in screens if k.id == earlier.id).revoked  # replaced, not piled up
    again = httpx.get(f"{url}/kiosk/login", params={"code": code}, timeout=10)
    assert again.status_code == 401 and "used already or has expired" in again.text
    stale = kiosk_keys.create_link("kiosk screen", ttl_s=0.01)
    time.sleep(0.05)
    assert httpx.get(f"{url}/kiosk/login", params={"code": stale}, timeout=10).status_code == 401
    assert httpx.get(f"{url}/kiosk/login", params={"code": "sl_forged"}, timeout=10).status_code == 401


def test_a_kiosk_screen_up_before_the_models_waits_for_them(stack: VoiceStack, tmp_path: Path) -> None:
    """A kiosk's own screen comes up while the models still warm (503 with Retry-After from /kiosk/config):
    the page says the device is starting and asks again, instead of sending anyone to sign in."""
    keys, gate = KeyStore(tmp_path / "keys.json"), threading.Event()
    models = VoiceModels(build=lambda: gate.wait(60) and stack, retry_after_s=1)  # type: ignore[arg-type,return-value]
    services = ApiServices(ApiSettings(rate_per_minute=1000), keys, models, list)

    def waits_then_fills_the_languages(page: object) -> None:
        page.wait_for_function("document.querySelector('#error').textContent.includes('starting')")  # type: ignore[attr-defined]
        assert page.is_disabled("#start") and page.text_content("#state") == "Starting"  # type: ignore[attr-defined]
        gate.set()
        page.wait_for_function(  # type: ignore[attr-defined]
            "[...document.querySelectorAll('#language option')].some((o) => o.value === 'es')", timeout=20000)
        assert page.text_content("#error") == ""  # type: ignore[attr-defined]
        page.wait_for_function("!document.querySelector('#start').disabled")  # type: ignore[attr-defined]
        assert page.text_content("#state") == "Ready"  # type: ignore[attr-defined]

    try:
        with Server(services, warm=False) as server:  # up before the models, as under the supervisor
            browse(server.url, microphone(tmp_path, EN / "hello-world.wav"), waits_then_fills_the_languages,
                   f"/kiosk/login?code={keys.create_link('kiosk screen')}")
    finally:
        gate.set()
