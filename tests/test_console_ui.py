"""The console's pages in Debian's Chromium (Playwright): sign in, make an enrolment token that a device then
enrols with, add a release and start a rollout by the forms, and watch the rollout page halt by itself (its
numbers and reason update without a reload) as devices report failures. Forms without the CSRF token are
refused; pages send an unsigned-in browser to the sign-in page."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from appliance.fleet.enrolment import enrol, report
from appliance.fleet.identity import load_or_make
from tests.support.console import PASSWORD, Console

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by `make test`")
TARGET = "models/silero-vad-v6/2/manifest.json"


def test_sign_in_enrol_roll_out_and_watch_it_halt(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with Console(tmp_path / "console") as console, sync_playwright() as pw, httpx.Client(timeout=10) as http:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(console.url + "/")
        assert page.url.endswith("/login")
        page.fill("#name", "admin")
        page.fill("#password", "not the password")
        page.click("#signin")
        expect(page.locator("#error")).to_contain_text("Wrong user name or password")
        page.fill("#name", "admin")
        page.fill("#password", PASSWORD)
        page.click("#signin")
        expect(page.locator("#count-devices")).to_have_text("0")

        page.goto(console.url + "/enrol")
        page.fill("#enrol-group", "lobby")
        page.click("#make-token")
        token = page.locator("#token").inner_text().strip()
        keys = [load_or_make(tmp_path / f"device-{n}") for n in range(3)]
        enrol(console.url, keys[0], tmp_path / "device-0" / "fleet", http, token)
        admin = console.token("admin")
        for n, key in enumerate(keys[1:], 1):
            more = http.post(f"{console.url}/api/v1/enrolment-tokens", json={"group": "lobby"}, headers=admin)
            enrol(console.url, key, tmp_path / f"device-{n}" / "fleet", http, more.json()["token"])
        for key in keys:
            report(console.url, key, {"profile": "generic-x86_64", "health": "ok", "calls": 1, "installed": {}}, http)
        page.goto(console.url + "/")
        expect(page.locator("#count-devices")).to_have_text("3")
        expect(page.locator("#devices")).to_contain_text(keys[2].id)

        page.goto(console.url + "/rollouts")
        page.fill("#release-name", "vad-2")
        page.fill("#release-targets", "model silero-vad-v6 2")
        page.click("#add-release")
        page.select_option("#release", "vad-2")
        page.fill("#group", "lobby")
        page.fill("#waves", "100%")
        page.fill("#threshold", "20")
        page.click("#start")
        expect(page.locator("#state")).to_have_text("running")
        assert page.url.endswith("/rollouts/1")

        installed = {"model": {"silero-vad-v6": 2}}
        report(console.url, keys[0], {"health": "ok", "installed": installed}, http)
        expect(page.locator("#waves tr[data-wave='1'] .done")).to_have_text("1", timeout=10_000)  # live, no reload
        for key in keys[1:]:
            report(console.url, key, {"health": "ok", "installed": {}, "refused": [TARGET]}, http)
        expect(page.locator("#state")).to_have_text("halted", timeout=10_000)
        expect(page.locator("#reason")).to_contain_text("1 of 3 devices failed (33% > 20%)")

        page.goto(console.url + "/audit")
        expect(page.locator("#chain")).to_contain_text("intact")
        assert "rollout.start" in page.content() and "halted: wave 1" in page.content()
        browser.close()


def test_forms_need_their_csrf_token_and_pages_a_session(tmp_path: Path) -> None:
    with Console(tmp_path / "console") as console, httpx.Client(base_url=console.url, timeout=10) as http:
        assert http.get("/rollouts").headers["location"] == "/login"
        signed = http.post("/login", data={"name": "viewer", "password": PASSWORD})
        assert signed.status_code == 303 and "samesite=strict" in signed.headers["set-cookie"].lower()
        assert "httponly" in signed.headers["set-cookie"].lower()
        assert http.get("/").status_code == 200
        assert http.get("/enrol").status_code == 403  # a viewer
        assert http.get("/static/console.css").status_code == 200
        http.cookies.clear()
        http.post("/login", data={"name": "admin", "password": PASSWORD})
        refused = http.post("/enrol", data={"group": "x"})
        assert refused.status_code == 403 and "CSRF" in refused.text
