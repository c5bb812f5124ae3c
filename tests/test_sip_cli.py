"""`appliance sip check`, `appliance call` and `appliance sip status` as a user runs them: a real outbound call
to a SIPp answering machine that echoes our audio, the status of a running service over its API, and bad
input (a broken flow, no key, an unknown account) as one clear line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.api.threaded import ThreadedServer as Server
from appliance.bot.routing import FlowRouter
from appliance.config.settings import ApiSettings, BotSettings, SipSettings
from appliance.config.upstream import UpstreamSettings
from appliance.models import ModelStore
from appliance.runtime.routes import Routes
from appliance.sip.service import SipService
from appliance.voice.readiness import VoiceModels
from appliance.voice.stack import VoiceStack
from tests.support.cli import appliance
from tests.support.peers import free_port
from tests.support.sipp import UAS_ECHO


@pytest.fixture
def env(store: ModelStore) -> dict[str, str]:
    return {"APPLIANCE_MODELS__STORE": str(store.root)}


def test_check_flows(tmp_path: Path) -> None:
    proc = appliance("sip", "check")
    assert proc.returncode == 0, proc.stderr
    assert "flow example" in proc.stdout and "goodbye" in proc.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngreeting: Hi.\nstart: main\nsteps:\n  main:\n    say: Hi.\n    goto: nowhere\n")
    proc = appliance("sip", "check", str(broken))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "broken.yaml:7" in proc.stderr and "nowhere" in proc.stderr


@pytest.mark.skipif(shutil.which("sipp") is None, reason="needs sipp (sip-tester; make test)")
def test_call_says_its_text_to_an_answering_sipp(env: dict[str, str], tmp_path: Path) -> None:
    scenario = tmp_path / "uas.xml"
    scenario.write_text(UAS_ECHO.read_text())
    port = free_port()
    sipp = subprocess.Popen(["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
                             "-rtp_echo", "-mp", str(free_port(tcp_too=False, also=(2,))), "-timeout", "60s",
                             "-timeout_error", "-nostdin", "-bg"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc = appliance("call", f"sip:desk@127.0.0.1:{port}", "--say", "Your parcel arrives tomorrow.", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "answered (PCMU)" in proc.stdout and "call ended: announcement played" in proc.stdout
    finally:
        sipp.wait(30)
    proc = appliance("call", "sip:desk@127.0.0.1:1", "--say", "x", "--account", "nobody", env=env)
    assert proc.returncode == 2 and "no SIP account named 'nobody'" in proc.stderr


def test_status_of_the_running_service(stack: VoiceStack, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    _, token = keys.create("cli")
    services = ApiServices(ApiSettings(), keys, VoiceModels.of(stack), list)
    router = FlowRouter(BotSettings(records_dir=tmp_path / "calls"), Routes(UpstreamSettings()), services.models)
    services.sip = SipService(SipSettings(host="127.0.0.1", port=0), router)
    with Server(services) as server:
        proc = appliance("sip", "status", "--url", server.url, "--key", token)
        assert proc.returncode == 0, proc.stderr
        assert "SIP listening on 127.0.0.1:" in proc.stdout and "0 of 8 calls" in proc.stdout
        proc = appliance("sip", "status", "--url", server.url)
        assert proc.returncode == 2 and "an API key is needed" in proc.stderr
        proc = appliance("sip", "status", "--url", server.url, "--key", "wrong")
        assert proc.returncode == 2 and "401" in proc.stderr
