"""transcribe, speak, interpret and bench as a user runs them; bad input gets one clear line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from appliance.audio import read_audio
from appliance.models import ModelStore
from tests.support.cli import appliance

EN = Path("/usr/share/asterisk/sounds/en")
ES = Path("/usr/share/asterisk/sounds/es")


@pytest.fixture
def env(store: ModelStore) -> dict[str, str]:
    return {"APPLIANCE_MODELS__STORE": str(store.root)}


def test_transcribe_json_with_segments(env: dict[str, str], tmp_path: Path) -> None:
    a = read_audio(EN / "agent-alreadyon.wav", 16000).samples
    b = read_audio(EN / "vm-goodbye.wav", 16000).samples
    path = tmp_path / "two.flac"  # another format, another rate, two utterances apart
    sf.write(path, np.concatenate([a, np.zeros(16000, np.float32), b]), 16000, format="FLAC")
    proc = appliance("transcribe", str(path), "--language", "en", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    segments = json.loads(proc.stdout)["segments"]
    assert len(segments) == 2
    assert "agent number" in segments[0]["text"] and "goodbye" in segments[1]["text"].lower()
    assert segments[1]["start"] > segments[0]["end"]


def test_speak_and_interpret(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    assert appliance("speak", "Hello, how are you?", "-o", str(out), env=env).returncode == 0
    assert read_audio(out, None).duration > 0.5
    interpreted = tmp_path / "es-en.wav"
    proc = appliance("interpret", "--from", "es", "--to", "en", str(ES / "agent-alreadyon.wav"), "-o",
                     str(interpreted), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "agent" in proc.stdout.lower()
    assert read_audio(interpreted, None).duration > 1.0


def test_bad_inputs_are_clear(env: dict[str, str], tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    proc = appliance("transcribe", str(text), env=env)
    assert proc.returncode == 2 and "notes.wav" in proc.stderr
    proc = appliance("interpret", "--from", "en", "--to", "de", str(EN / "vm-goodbye.wav"), "-o",
                     str(tmp_path / "x.wav"), env=env)
    assert proc.returncode == 2 and "supported: en→pt" in proc.stderr.replace("\n", " ")
    proc = appliance("transcribe", str(tmp_path / "missing.wav"), env=env)
    assert proc.returncode == 2


def test_bench_voice_runs_side_by_side_with_pipecat_and_writes_json(env: dict[str, str], tmp_path: Path) -> None:
    """The in-process suites, and the echo bot through the realtime WebSocket against Pipecat's (its own venv,
    `make bench-peers`) on the same prompts: both answer, both heard, ratios and goals in the JSON."""
    out = tmp_path / "voice.json"
    peer = Path(__file__).resolve().parents[1] / ".venv-pipecat" / "bin" / "python"
    proc = appliance("bench", "voice", "--limit", "1", "--peer", "pipecat", "--peer-prompts", "2",
                     "--peer-python", str(peer), "--json", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    for suite in ("echo_en", "interpret_es_en"):
        for mode in ("streaming", "naive"):
            assert results[suite][mode]["n"] + results[suite][mode]["missed"] == 1
    assert results["tts"]["rtf_mean"] > 0
    side = results["peer"]
    assert side["peer"] == "pipecat" and len(side["prompts"]) == 2
    for bot in ("appliance_websocket", "pipecat"):
        assert side[bot]["n"] == 2 and side[bot]["wer"] <= 0.5, side[bot]  # every turn answered, words heard
        assert all(0 < t["latency_s"] < 5 for t in side[bot]["turns"])
    assert side["speedup_p50"] > 0 and set(side["goals"]) >= {"p50_ms", "p95_ms", "wer_vs_peer", "speedup_p95"}
    assert "Voice-to-voice latency" in proc.stdout and "side by side with pipecat" in proc.stdout


def test_bench_voice_without_the_peers_venv_says_how_to_make_it(env: dict[str, str], tmp_path: Path) -> None:
    proc = appliance("bench", "voice", "--peer", "pipecat", "--peer-python", str(tmp_path / "none" / "python"),
                     env=env)
    assert proc.returncode == 2 and "make bench-peers" in proc.stderr
    proc = appliance("bench", "voice", "--peer", "livekit", env=env)
    assert proc.returncode == 2 and "known: pipecat" in proc.stderr
