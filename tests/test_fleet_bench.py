"""`appliance bench update` as a user runs it: the real agent on loopback, a delta against the whole file."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.models import ModelStore, load_catalog
from tests.support.cli import appliance


def test_the_update_benchmark_measures_a_delta_against_the_whole_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelStore(store).pull(load_catalog().get("silero-vad-v6"))
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{store}"\n')
    out = tmp_path / "update.json"
    proc = appliance("--config", str(config), "bench", "update", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    cases = results["cases"]
    assert set(cases) == {"new_model_full", "changed_model_full", "changed_model_delta", "config_change",
                          "noop_poll"}
    size = results["model_bytes"]
    assert cases["new_model_full"]["target_bytes"] > size * 0.99  # the files (and the manifest) once
    assert cases["changed_model_full"]["target_bytes"] > size * 0.99
    assert 0 < cases["changed_model_delta"]["target_bytes"] < size * 0.01
    assert results["delta_vs_full"]["target_bytes_ratio"] < 0.01
    assert cases["noop_poll"]["target_bytes"] == 0 and cases["noop_poll"]["requests"] <= 2
    assert cases["config_change"]["target_bytes"] == len("[voice]\nhangover_ms = 240\n")
    assert "delta vs whole file" in proc.stdout
