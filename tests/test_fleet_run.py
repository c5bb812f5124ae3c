"""The update agent inside `appliance run`: a device started with ``fleet.repository`` pointing at a published
repository picks up a new model version and a configuration change within one poll; the configuration reaches
the running services through the reload path, and `appliance agent status` and /health say what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from appliance.bench.repo_server import RepoServer
from appliance.models.store import sha256_file
from tests.support import fleet
from tests.support.cli import appliance
from tests.support.supervision import ROOT, wait_until


def test_a_running_appliance_takes_a_new_model_and_a_config_change_in_one_poll(tmp_path: Path) -> None:
    made = fleet.two_versions(tmp_path, b"from the fleet", offer_v1=True)
    repo, store, v2 = made.repo, made.store, made.v2
    bundle = tmp_path / "lobby.toml"
    bundle.write_text("[api]\nrate_per_minute = 33\n")
    fleet.add_config(repo, "lobby", bundle, fleet.Release())
    fleet.publish(repo)
    state = tmp_path / "state"
    config = tmp_path / "appliance.toml"
    with RepoServer(tmp_path / "repo") as server:
        config.write_text(f"""
[models]
store = "{store.root}"
[api]
host = "127.0.0.1"
port = 0
rate_per_minute = 120
[fleet]
repository = "{server.url}"
root = "{repo.metadata_dir / '1.root.json'}"
state_dir = "{state / 'fleet'}"
interval_s = 3600
config = "lobby"
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env |= {"STATE_DIRECTORY": str(state), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config), "run"], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def installed() -> dict[str, Any]:
            try:
                return dict(json.loads((state / "fleet" / "installed.json").read_text()))
            except (OSError, ValueError):
                return {}

        def status() -> dict[str, Any]:
            try:
                return dict(json.loads((state / "status.json").read_text()))
            except (OSError, ValueError):
                return {}

        try:
            done = wait_until(lambda: (s := status()).get("services", {}).get("api", {}).get("rate_per_minute") == 33
                              and s.get("services", {}).get("agent", {}).get("last_check") and s, 120,
                              "the config bundle applied by the agent")
            assert proc.poll() is None
            expected = {"model": {fleet.MODEL: 2}, "config": {"lobby": 1}, "firmware": {}}
            wait_until(lambda: installed() == expected, 60, "both recorded installed")  # after the config's check
            onnx = store.resolve(fleet.MODEL).file("onnx", ".onnx")
            assert sha256_file(onnx) == sha256_file(v2 / "onnx" / "model.onnx")
            assert done["services"]["agent"]["last_error"] is None
            loaded = wait_until(lambda: status()["services"]["agent"]["models_loaded"].get(fleet.MODEL), 10,
                                "the loaded versions in the status")
            assert loaded == store.active_digest(fleet.MODEL) != made.v1.name  # the running stack swapped to v2
            assert len([p for p, _ in server.requests if p == "/metadata/timestamp.json"]) == 1  # one poll
            api = done["services"]["api"]["listen"].rsplit(":", 1)[1]
            health = httpx.get(f"http://127.0.0.1:{api}/health", timeout=5).json()
            assert health["supervisor"]["services"]["agent"] == "ready"
            events = [json.loads(line) for line in (state / "fleet" / "events.jsonl").read_text().splitlines()]
            assert [(e["type"], e["kind"]) for e in events if e["type"] == "apply"] == [("apply", "model"),
                                                                                  ("apply", "config")]
            shown = appliance("--config", str(config), "agent", "status", "--json",
                              env={"STATE_DIRECTORY": str(state)})
            assert json.loads(shown.stdout)["installed"]["config"] == {"lobby": 1}, shown.stdout
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_appliance_agent_poll_installs_and_an_unreachable_repository_is_one_line_and_exit_1(tmp_path: Path) -> None:
    made = fleet.two_versions(tmp_path, b"by hand", offer_v1=False)
    fleet.publish(made.repo)
    config = tmp_path / "appliance.toml"

    def configure(url: str) -> None:
        config.write_text(f'[models]\nstore = "{made.store.root}"\n[fleet]\nrepository = "{url}"\n'
                          f'root = "{made.repo.metadata_dir / "1.root.json"}"\nstate_dir = "{tmp_path / "fleet"}"\n')

    with RepoServer(tmp_path / "repo") as server:
        configure(server.url)
        polled = appliance("--config", str(config), "agent", "poll")
    assert polled.returncode == 0, polled.stdout + polled.stderr
    assert "last_error   -" in polled.stdout
    assert sha256_file(made.store.resolve(fleet.MODEL).file("onnx", ".onnx")) == sha256_file(
        made.v2 / "onnx" / "model.onnx")
    configure("http://127.0.0.1:9")  # nothing listens on the discard port
    down = appliance("--config", str(config), "agent", "poll")
    assert down.returncode == 1 and "unreachable" in down.stdout, down.stdout + down.stderr
    shown = appliance("--config", str(config), "agent", "status")
    assert shown.returncode == 0 and "unreachable" in shown.stdout and fleet.MODEL in shown.stdout
