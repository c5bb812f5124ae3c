"""`appliance bench console` in small: simulated devices against the real `appliance console serve` on SQLite
and on a PostgreSQL server started for the run; the JSON has both and their ratio, and no request failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bench.postgres import BIN
from tests.support.cli import appliance


@pytest.mark.skipif(BIN is None, reason="needs PostgreSQL (Debian postgresql; make test installs it)")
def test_bench_console_reports_both_databases_and_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    done = appliance("bench", "console", "--devices", "20", "--interval", "0.5", "--seconds", "3",
                     "--json", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    for name in ("sqlite", "postgresql"):
        figures = results[name]
        assert figures["errors"] == 0 and figures["requests"] > 40, figures
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] and figures["console_cpu"] > 0
    ratios = results["ratios_postgresql_over_sqlite"]
    assert set(ratios) == {"requests_per_s", "p50_ms", "p95_ms", "console_cpu"} and all(ratios.values())
