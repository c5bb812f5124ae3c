"""The `appliance` command as a user runs it: a real subprocess, real models, no tracebacks ever."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from appliance.models import ModelStore
from tests.support.cli import appliance


@pytest.fixture
def store_env(tflite_store: ModelStore) -> dict[str, str]:
    return {"APPLIANCE_MODELS__STORE": str(tflite_store.root)}


def test_doctor_json_on_this_machine(store_env: dict[str, str]) -> None:
    proc = appliance("doctor", "--json", env=store_env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["profile"]["name"] == "generic-x86_64"
    assert report["hardware"]["cpu"]["arch"] == "x86_64"
    models = {m["model"]: m for m in report["models"]}
    assert models["whisper-tiny-en"]["runtime"] == "ctranslate2:cpu:int8"
    assert models["whisper-base"]["runtime"] == "ctranslate2:cpu:int8"
    for model_id in ("piper-en-us-joe-medium", "silero-vad-v6", "speaker-embedder"):
        assert models[model_id]["runtime"] in ("onnxruntime:cpu", "openvino:CPU", "litert:cpu"), model_id
        assert models[model_id]["store"] == "active"
    rejected = {a["candidate"]: a["reason"] for a in models["whisper-tiny-en"]["attempts"] if not a["passed"]}
    assert rejected["ctranslate2:cuda:int8_float16"] == "CTranslate2 finds no CUDA device"
    assert report["runtimes"]["coreml"].startswith("unavailable")


def test_doctor_table(store_env: dict[str, str]) -> None:
    proc = appliance("doctor", env=store_env)
    assert proc.returncode == 0, proc.stderr
    for heading in ("Hardware", "Profile: generic-x86_64", "Runtimes per model", "Runtime libraries"):
        assert heading in proc.stdout


def test_doctor_compare_mode_times_passing_candidates(store_env: dict[str, str]) -> None:
    proc = appliance("doctor", "--json", env={**store_env, "APPLIANCE_RUNTIME__COMPARE_CANDIDATES": "true"})
    models = {m["model"]: m for m in json.loads(proc.stdout)["models"]}
    attempts = models["silero-vad-v6"]["attempts"]
    assert sum(a["reason"].startswith("passed, but slower") for a in attempts) == 2  # of three that pass


def test_missing_model_makes_doctor_fail_with_the_fix(tmp_path: Path) -> None:
    proc = appliance("doctor", env={"APPLIANCE_MODELS__STORE": str(tmp_path)})
    assert proc.returncode == 1
    assert "appliance models pull" in proc.stdout.replace("\n", " ")


def test_bad_config_is_one_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[runtime]\nthreads = 'lots'\n[modles]\nstore = '/x'\n")
    proc = appliance("--config", str(config), "doctor")
    assert proc.returncode == 2
    assert "runtime.threads" in proc.stderr and "modles: unknown key" in proc.stderr
    assert proc.stdout == ""


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    proc = appliance("config", "show", env={"APPLIANCE_UPSTREAM__API_KEY": "sk-live-123456"})
    assert proc.returncode == 0
    assert "sk-live-123456" not in proc.stdout and '"********"' in proc.stdout


def test_models_pull_list_verify(tmp_path: Path, tflite_store: ModelStore) -> None:
    env = {"APPLIANCE_MODELS__STORE": str(tmp_path)}
    pulled = appliance("models", "pull", "silero-vad-v6", "speaker-embedder", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "tflite variant(s)" in pulled.stdout or "tflite" in pulled.stdout  # not built: no converter set
    listed = appliance("models", "list", env=env)
    assert "silero-vad-v6" in listed.stdout and "not provisioned" in listed.stdout
    assert appliance("models", "verify", env=env).returncode == 0
    blob = next((tmp_path / "blobs" / "sha256").iterdir())
    blob.chmod(0o644)
    with blob.open("r+b") as fh:
        fh.seek(10)
        fh.write(b"corrupt")
    verified = appliance("models", "verify", env=env)
    assert verified.returncode == 1 and "corrupted" in verified.stdout and "pull --force" in verified.stdout
    unknown = appliance("models", "pull", "whisper-huge", env=env)
    assert unknown.returncode == 2 and "unknown model 'whisper-huge'" in unknown.stderr


def test_the_first_api_key_is_printed_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Under systemd stdout is the journal: no key is made there (nobody could read it but the journal)."""
    from appliance.api.keys import KeyStore
    from appliance.cli.serve_cmd import first_key

    keys = KeyStore(tmp_path / "keys.json")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    first_key(keys)
    assert keys.list() == [] and "appliance keys create" in capsys.readouterr().out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    first_key(keys)
    (key,) = keys.list()
    token = capsys.readouterr().out.split()[-1]
    assert keys.check(token) == (key, "")
    first_key(keys)  # one is enough
    assert len(keys.list()) == 1 and capsys.readouterr().out == ""


def test_a_sign_in_link_is_printed_once_and_kept_only_hashed(tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    from appliance.api.keys import KeyStore

    keys_file = tmp_path / "keys.json"
    env = {"APPLIANCE_API__KEYS_FILE": str(keys_file), "APPLIANCE_API__PORT": "8181"}
    done = appliance("keys", "link", "kiosk screen", "--ttl", "90", "--next", "/kiosk?mode=echo", env=env)
    assert done.returncode == 0, done.stderr
    url = urlsplit(done.stdout.strip())
    query = parse_qs(url.query)
    assert (url.netloc, url.path, query["next"]) == ("127.0.0.1:8181", "/kiosk/login", ["/kiosk?mode=echo"])
    code = query["code"][0]
    assert code.startswith("sl_") and code not in keys_file.read_text()  # stored as its hash
    key, token = KeyStore(keys_file).redeem(code) or (None, "")
    assert key is not None and key.name == "kiosk screen" and KeyStore(keys_file).check(token) == (key, "")
    assert KeyStore(keys_file).redeem(code) is None  # once


def test_run_only_names_the_services_it_knows() -> None:
    proc = appliance("run", "--only", "api,fleet")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: no service called 'fleet'; the services are api, sip, wyoming, agent"
