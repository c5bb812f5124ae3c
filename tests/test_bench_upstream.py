"""`appliance bench upstream` end to end with the real model server: its JSON holds each figure beside its baseline
(the gateway beside llama.cpp direct, an upstream turn beside the local path, the fallbacks beside the budget)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import appliance


def test_the_upstream_benchmark_measures_chat_turns_and_fallbacks(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{tmp_path / "store"}"\n')
    env = {"APPLIANCE_CONFIG": str(config)}
    assert appliance("models", "pull", "smollm2-135m-instruct", env=env).returncode == 0
    out = tmp_path / "upstream.json"
    proc = appliance("bench", "upstream", "--prompts", "2", "--json", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    chat = results["models"]["smollm2-135m-instruct"]
    for path in ("gateway", "direct"):
        assert chat[path]["n"] == 2 and chat[path]["first_token_p50_ms"] > 0 and chat[path]["tokens_per_s"] > 0
    assert chat["ratios_gateway_over_direct"]["tokens_per_s"] > 0
    turn = results["turn"]
    assert turn["answered_upstream"] == 2 and turn["upstream_p50_ms"] > turn["local_p50_ms"] >= 0
    down = results["fallback"]
    assert down["refused_ms"] < down["budget_ms"] <= down["stalled_ms"] < down["budget_ms"] + 500
    assert down["stalled_then_breaker_open_ms"] < 50 and down["refused_then_breaker_open_ms"] < 50
    assert "tokens/s" in proc.stdout and "breaker open" in proc.stdout
