"""`appliance bench supervisor` at a tiny size: `appliance run` in a subprocess with an empty model store (no model
loads) and Wyoming on, one boot and one kill -9 of its Wyoming child, then the JSON's fields checked for presence
and plausibility; a boot that cannot reach READY=1 in time ends in one ApplianceError with the child's last lines,
and a failed boot leaves no process behind (not even the Wyoming child, in a session of its own)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from appliance.bench.supervisor import SupervisorBenchOptions, _alive, _Appliance, _children_of, planned_steps, run
from appliance.config import Settings
from appliance.config.settings import ModelsSettings
from appliance.errors import ApplianceError


def test_one_boot_with_an_empty_store(tmp_path: Path) -> None:
    settings = Settings(models=ModelsSettings(store=tmp_path / "store"))
    options = SupervisorBenchOptions(repeat=1, kills=1, idle_s=0.5, timeout_s=45)
    steps: list[str] = []
    result = json.loads(json.dumps(run(settings, options, steps.append).to_json()))
    assert len(steps) == planned_steps(options) == 1 + 2 * 4, steps
    assert result["models_active"] == [] and result["store"] == str(tmp_path / "store")
    assert len(result["help_s"]) == 1 and result["help_s"][0] > 0
    boot, empty = result["boots"][0], result["empty_store"]
    for b in (boot, empty):
        assert min(b["api_s"], b["ready_s"], b["warm_s"]) > 0 and b["warm_s"] < 45, b
        assert "api ready" in b["status"] and "wyoming ready" in b["status"], b["status"]
        assert b["exit_code"] == 0 and b["outlived"] == [] and 0 < b["stop_s"] < 45, b
        assert b["watchdog_pings"] >= 1  # WATCHDOG_USEC of 2 s: a ping a second
        assert set(b["memory"]) == {"supervisor", "wyoming", "total"}, b["memory"]
        total = b["memory"]["total"]
        assert total["rss_mib"] == round(b["memory"]["supervisor"]["rss_mib"] + b["memory"]["wyoming"]["rss_mib"], 1)
        assert 20 < b["memory"]["wyoming"]["rss_mib"] <= b["memory"]["wyoming"]["rss_peak_mib"]
        (kill,) = b["kills"]
        assert kill["nth"] == 1 and kill["backoff_s"] == 0.25 and kill["new_pid"] not in (None, kill["pid"])
        assert 0.25 < kill["serving_s"] <= kill["health_s"] < 45, kill
    summary = result["summary"]
    assert summary["ready"]["n"] == 1 and summary["ready"]["vs_help_p50"] > 0, summary["ready"]
    assert summary["ready"]["vs_empty_store_p50"] > 0 and summary["serving"][0]["vs_empty_store_p50"] > 0
    assert summary["serving"][0]["p50_ms"] == 1000 * boot["kills"][0]["serving_s"]
    assert summary["exit_codes"] == [0] and summary["memory_mib"]["total_rss"] == [boot["memory"]["total"]["rss_mib"]]
    goals = result["goals"]
    assert goals["boot_to_ready"]["worst_s"] == boot["ready_s"] and goals["idle_rss"]["met"] is True, goals
    assert goals["kill_to_serving"]["met"] is (boot["kills"][0]["serving_s"] <= 1.0)
    assert any("kill -9" in note for note in result["notes"])


def test_no_ready_in_time_is_one_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    settings = Settings(models=ModelsSettings(store=tmp_path / "store"))
    before = _children_of(os.getpid())
    options = SupervisorBenchOptions(repeat=1, kills=1, baseline_boot=False, timeout_s=0.3)
    with pytest.raises(ApplianceError, match=r"within 0.3 s; the last lines of its output"):
        run(settings, options)
    assert _children_of(os.getpid()) <= before
    with pytest.raises(ApplianceError, match="kills per boot must be 1 to 4"):
        run(settings, SupervisorBenchOptions(kills=5))


def test_a_failed_boot_takes_its_wyoming_child_down_too(tmp_path: Path) -> None:
    """The Wyoming child lives in a session of its own: killing the supervisor's would orphan it."""

    async def main() -> None:
        app = _Appliance(tmp_path / "b", {}, tmp_path / "store", SupervisorBenchOptions(timeout_s=45))
        try:
            await app.spawn()
            assert app.proc is not None
            pid = app.proc.pid
            _, (child,) = await app.until("the Wyoming child", lambda: {p for p in _children_of(pid)
                                                                       if _alive(p, "wyoming")})
        finally:
            await app.close()
        assert app.proc.returncode is not None and not _alive(child)

    asyncio.run(main())
