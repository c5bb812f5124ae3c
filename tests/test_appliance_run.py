"""The appliance's own services under the supervisor: `appliance run` in a subprocess (SIGHUP reload, SIGTERM
while the models load), the API gate and what /health shows, Wyoming on the shared models, a real appliance
process as a child, the phone refusing new calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.ports import free_port
from appliance.supervisor import Notifier, ProcessService, ServiceState, Supervisor, SupervisorOptions
from tests.support.supervision import ROOT, Factory, Listener, until, wait_until


def test_sighup_applies_a_changed_setting_to_the_running_appliance(listener: Listener, tmp_path: Path) -> None:
    """`appliance.services.run` in a subprocess (empty model store: no models): SIGHUP with a changed
    sip.max_calls and api.rate_per_minute applies both without restarting the phone; SIGTERM exits 0."""
    config, state = tmp_path / "appliance.toml", tmp_path / "state"

    def write(max_calls: int, rate: int) -> None:
        config.write_text(f"""
[models]
store = "{tmp_path / 'store'}"
[api]
host = "127.0.0.1"
port = 0
rate_per_minute = {rate}
[sip]
host = "127.0.0.1"
port = 0
max_calls = {max_calls}
[bot]
records_dir = "{tmp_path / 'calls'}"
""")

    write(8, 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "2000000", "PYTHONPATH": str(ROOT)}
    code = "import asyncio, sys; from pathlib import Path; from appliance.services import run; " \
           "sys.exit(asyncio.run(run(Path(sys.argv[1]), Path(sys.argv[2]))))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(config), str(state)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status_file = state / "status.json"

    def status() -> dict[str, Any]:
        try:
            return dict(json.loads(status_file.read_text()))
        except (OSError, ValueError):
            return {}

    try:
        start = time.monotonic()
        wait_until(lambda: listener.fields("READY") or proc.poll() is not None, 30, "READY=1")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        print(f"\nboot -> READY=1: {listener.fields('READY')[0][0] - start:.2f} s (including Python imports)")
        first = wait_until(lambda: (s := status()).get("services", {}).get("sip", {}).get("max_calls") and s, 5,
                           "sip in the status file")
        assert first["services"]["sip"]["max_calls"] == 8 and first["state"] == "running"
        api_port = int(first["services"]["api"]["listen"].rsplit(":", 1)[1])
        health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5).json()
        assert health["supervisor"]["services"]["sip"] == "ready"  # states only: no key sent
        assert health["ready"] is True  # the empty stack warms at once
        write(3, 7)
        proc.send_signal(signal.SIGHUP)
        after = wait_until(lambda: (s := status())["services"]["sip"].get("max_calls") == 3 and s, 10,
                           "the new sip.max_calls")
        assert after["services"]["api"]["rate_per_minute"] == 7
        assert after["services"]["sip"]["since"] == first["services"]["sip"]["since"]  # not restarted
        assert after["services"]["sip"]["listen"] == first["services"]["sip"]["listen"]
        assert listener.fields("RELOADING") and len(listener.fields("READY")) == 2
        assert listener.fields("WATCHDOG")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert listener.fields("STOPPING") and status()["state"] == "stopped"
        output = proc.stdout.read() if proc.stdout else ""
        assert output.count("the appliance is ready") == 1, output  # once, not again after the reload
        assert f"kiosk page   http://127.0.0.1:{api_port}/kiosk" in output
        assert f"sip:<number>@{first['services']['sip']['listen']}" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_the_models_load_exits_at_once_and_cleanly(listener: Listener, tmp_path: Path,
                                                                 store: Any) -> None:
    """`appliance run` with every model of the store: SIGTERM after READY=1 but before the models are warm ends
    it with code 0 without waiting for the load (seconds) and without the abort an interpreter teardown under a
    loading runtime gives (ONNX Runtime: "terminate called", SIGABRT)."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{store.root}"\n[api]\nhost = "127.0.0.1"\nport = 0\n'
                      f'keys_file = "{tmp_path / "keys.json"}"\n[sip]\nhost = "127.0.0.1"\nport = 0\n'
                      f'[bot]\nrecords_dir = "{tmp_path / "calls"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"NOTIFY_SOCKET": listener.env_value, "STATE_DIRECTORY": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config), "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: listener.fields("READY") or proc.poll() is not None, 60, "READY=1")
        assert proc.poll() is None and "models warming" in listener.fields("STATUS")[-1][1]
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopping
        output = proc.stdout.read() if proc.stdout else ""
        assert code == 0 and "terminate called" not in output, output[-2000:]
        assert "models ready" not in " ".join(text for _, text in listener.fields("STATUS")), "warm before SIGTERM"
        assert took < 5, took  # the store's models take ~8 s more to load here: a stop that waited takes that
        print(f"\nSIGTERM while the models load -> exit {code} in {took:.2f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the appliance's own services -----------------------------------------------------------------------------------
def test_the_api_gate_refuses_new_work_while_reads_go_on() -> None:
    from appliance.services.api import Gate

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    refusing = [False]
    gate = Gate(inner, lambda: refusing[0])

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://device") as client:
            assert (await client.post("/v1/audio/speech")).text == "inner"
            refusing[0] = True
            refused = await client.post("/v1/audio/speech")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
            assert refused.json()["error"]["code"] == "unavailable"
            assert (await client.get("/v1/models")).text == "inner"  # reading still works
            assert (await client.get("/health")).text == "inner"

    asyncio.run(main())


def test_health_shows_the_supervisor_states_to_anyone_and_everything_with_a_key(tmp_path: Path) -> None:
    """/health: every service's state for anyone; pids, addresses, memory and errors only with a valid key."""
    from appliance.api.app import create_app
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore
    from appliance.config.settings import ApiSettings
    from appliance.voice.readiness import VoiceModels

    keys = KeyStore(tmp_path / "keys.json")
    (_, token), (revoked, old) = keys.create("ops"), keys.create("old")
    keys.revoke(revoked.id)
    view = {"state": "running", "ready": True, "pid": 42, "memory": {"current_bytes": 1},
            "services": {"sip": {"state": "ready", "pid": None, "listen": "0.0.0.0:5060", "last_error": "x"}}}
    services = ApiServices(ApiSettings(), keys, VoiceModels(), list, standalone=False, supervisor=lambda: view)
    app = create_app(services)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://device") as client:
            public = {"state": "running", "ready": True, "services": {"sip": "ready"}}
            health = (await client.get("/health")).json()
            assert health == {"status": "ok", "ready": False, "error": None, "supervisor": public}
            for wrong in (old, "appliance_nope_nope", ""):
                headers = {"authorization": f"Bearer {wrong}"}
                assert (await client.get("/health", headers=headers)).json()["supervisor"] == public
            full = (await client.get("/health", headers={"authorization": f"Bearer {token}"})).json()
            assert full["supervisor"] == view
            warming = await client.post("/v1/audio/speech", json={"input": "hi"},
                                        headers={"authorization": f"Bearer {token}"})
            assert warming.status_code == 503 and warming.headers["retry-after"] == "5"
            assert warming.json()["error"]["code"] == "warming"

    asyncio.run(main())


def test_a_real_appliance_child_comes_back_after_kill_9_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`appliance wyoming` (empty model store) as a ProcessService: ready when its STT port accepts, restarted after
    kill -9, and ended by the default SIGTERM (both of its servers under one handler)."""
    stt, tts = free_port(), free_port()
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{tmp_path / "store"}"\n[wyoming]\nstt_uri = "tcp://127.0.0.1:{stt}"\n'
                      f'tts_uri = "tcp://127.0.0.1:{tts}"\n')
    argv = [sys.executable, "-m", "appliance", "--config", str(config), "wyoming"]
    factory = Factory(wyoming=lambda: ProcessService("wyoming", argv, ready_tcp=("127.0.0.1", stt)))
    timings: dict[str, float] = {}

    async def main() -> None:
        sup = Supervisor(factory, {"wyoming": ((), 1)}, SupervisorOptions(poll_s=0.02), Notifier({}))
        await sup.start()
        unit = sup.units["wyoming"]
        timings["start"] = await until(lambda: unit.state is ServiceState.READY, 30, "wyoming ready")
        pid = unit.service.pid
        assert pid is not None and unit.service.health()["listen"] == f"127.0.0.1:{stt}"
        os.kill(pid, signal.SIGKILL)
        def back() -> bool:  # a new live process that is ready (the dead one's pid reads None, not its old pid)
            return unit.state is ServiceState.READY and unit.service.pid not in (None, pid)

        timings["kill -9"] = await until(back, 30, "wyoming back")
        second = unit.service
        stopping = time.monotonic()
        await sup.stop()
        timings["stop"] = time.monotonic() - stopping
        assert second.health()["exit_code"] == 0  # SIGTERM ended it cleanly, no SIGKILL after the grace

    asyncio.run(main())
    print(f"\nappliance child: ready in {timings['start']:.2f} s, serving again {timings['kill -9']:.2f} s after "
          f"kill -9, stopped in {timings['stop']:.2f} s")


def test_wyoming_serves_the_shared_models_and_waits_for_them_while_they_warm() -> None:
    """WyomingTask listens before the models are warm: a Describe that comes meanwhile waits and is answered once
    they are; when they failed to load, the client gets an Error saying so. A crashed server task comes back."""

    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    from appliance.config.settings import WyomingSettings
    from appliance.services.wyoming import WyomingTask
    from appliance.voice.readiness import VoiceModels

    stt, tts = free_port(), free_port()
    settings = Settings(wyoming=WyomingSettings(enabled=True, stt_uri=f"tcp://127.0.0.1:{stt}",
                                                tts_uri=f"tcp://127.0.0.1:{tts}"))
    loaded = threading.Event()

    def build() -> Any:
        assert loaded.wait(10)
        return SimpleNamespace(asr={}, voices={})

    async def describe() -> Any:
        async with asyncio.timeout(10), AsyncTcpClient("127.0.0.1", stt) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    def broken() -> Any:
        raise ApplianceError("no runtime could run whisper-tiny-en")

    async def main() -> None:
        models = VoiceModels(build)
        factory = Factory(wyoming=lambda: WyomingTask(settings, models))
        sup = Supervisor(factory, {"wyoming": ((), 1)}, SupervisorOptions(poll_s=0.02), Notifier({}))
        warm = asyncio.create_task(models.warm())
        await sup.start()
        unit = sup.units["wyoming"]
        await until(lambda: unit.state is ServiceState.READY, 10, "wyoming ready")
        assert models.state == "warming"  # ready before the models
        asking = asyncio.create_task(describe())
        await asyncio.sleep(0.3)
        assert not asking.done()  # waiting for the models
        loaded.set()
        assert Info.is_type((await asking).type)
        await warm
        first = unit.service
        assert isinstance(first, WyomingTask) and first.servers is not None
        first._stop.set()  # run() returns without being asked to: a crash, as far as the supervisor can tell
        await until(lambda: unit.state is ServiceState.READY and unit.restarts == 1, 10, "wyoming back")
        assert Info.is_type((await describe()).type)
        await sup.stop()

        failed = VoiceModels(broken)
        await failed.warm()
        task = WyomingTask(settings, failed)
        await task.start()
        await until(lambda: task._ready.is_set(), 10, "wyoming ready")
        event = await describe()
        assert event.type == "error" and "could not be loaded: no runtime" in event.data["text"]
        assert event.data["code"] == "models-unavailable"
        await task.stop(1.0)

    asyncio.run(main())


def test_the_phone_turns_new_calls_away_while_refusing() -> None:
    from appliance.calls import CallInfo, NotReady
    from appliance.services.sip import SipTask

    services: Any = SimpleNamespace(sip=None)
    task = SipTask(Settings(), services)
    task.refuse(True)
    with pytest.raises(NotReady, match="stopping or short of memory"):
        task._route(CallInfo("call-1", "sip:caller@example.com", "100"))


def test_where_the_services_listen_is_said_for_people() -> None:
    from appliance.config.settings import WyomingSettings
    from appliance.services import where

    status = {"services": {"api": {"state": "ready", "listen": "0.0.0.0:8080"},
                           "sip": {"state": "ready", "listen": "192.168.1.20:5060"},
                           "wyoming": {"state": "failed"}}}
    text = where(status, Settings(wyoming=WyomingSettings(enabled=True)))
    assert "kiosk page   http://<this device>:8080/kiosk" in text  # a wildcard address: every address it has
    assert "sip:<number>@192.168.1.20:5060 (UDP and TCP), RTP 10000-20000/udp" in text
    assert "Wyoming      tcp://127.0.0.1:10300" in text and "failed       wyoming" in text
    assert "SIP" not in where({"services": {"api": {"listen": "127.0.0.1:1"}}}, Settings())  # SIP off: not said
