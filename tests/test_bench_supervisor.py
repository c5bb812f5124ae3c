"""`appliance bench supervisor` at a tiny size: `appliance run` in a subprocess with an empty model store (no model
loads) and Wyoming on, one boot, one kill -9 of the whole appliance and its restart as systemd's, then the JSON's
fields checked for presence and plausibility; a boot that cannot reach READY=1 in time ends in one ApplianceError
with the child's last lines, and a failed or aborted boot leaves nothing of the appliance's session behind."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from appliance.bench.procs import alive, descendants, session_members
from appliance.bench.spawned import SpawnedAppliance
from appliance.bench.supervisor import SupervisorBenchOptions, planned_steps, run
from appliance.bench.supervisor_data import RESTART_SEC
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
        assert min(b["api_s"], b["ready_s"], b["warm_s"]) > 0 and b["api_s"] <= b["warm_s"] < 45, b
        assert "api ready" in b["status"] and "wyoming ready" in b["status"], b["status"]
        assert b["exit_code"] == 0 and b["outlived"] == [] and 0 < b["stop_s"] < 45, b
        assert len(b["watchdog_pings"]) == 2 and min(b["watchdog_pings"]) >= 1, b  # the first process, its restart
        assert set(b["memory"]) == {"supervisor", "total"}, b["memory"]  # no child: every service is in-process
        own, total = b["memory"]["supervisor"], b["memory"]["total"]
        assert 20 < own["rss_mib"] <= own["rss_peak_mib"] and total["rss_mib"] == own["rss_mib"], b["memory"]
        assert 0 < own["pss_mib"] <= own["rss_mib"] and total["pss_mib"] == own["pss_mib"], b["memory"]
        (kill,) = b["kills"]
        assert kill["nth"] == 1 and kill["restart_sec"] == RESTART_SEC and kill["exit_code"] == -9, kill
        assert kill["left"] == [], kill
        assert kill["new_pid"] != kill["pid"] and 0 < kill["gone_s"] < 5, kill
        times = [kill[f"{k}_s"] for k in ("ready", "api", "wyoming", "warm")]
        assert kill["gone_s"] + RESTART_SEC < min(times) and max(times) < 45, kill  # RestartSec included
        # socket activation (the default): sent while no process ran, answered by the next one
        assert kill["held"] == "HTTP 200" and kill["sip"] == "SIP/2.0 200 OK", kill
        assert kill["gone_s"] + RESTART_SEC < min(kill["held_s"], kill["sip_s"]) < 45, kill
    summary = result["summary"]
    assert summary["ready"]["n"] == 1 and summary["ready"]["vs_help_p50"] > 0, summary["ready"]
    assert summary["api"]["p50_ms"] == pytest.approx(1000 * boot["api_s"]) and summary["stop"]["n"] == 1
    serving = summary["serving"][0]
    assert serving["nth"] == 1 and serving["restart_sec"] == RESTART_SEC and serving["vs_empty_store_p50"] > 0
    assert serving["held"]["outcomes"] == ["HTTP 200"] and serving["sip"]["outcomes"] == ["SIP/2.0 200 OK"], serving
    assert serving["p50_ms"] == pytest.approx(1000 * boot["kills"][0]["ready_s"])
    assert serving["wyoming"]["p50_ms"] == pytest.approx(1000 * boot["kills"][0]["wyoming_s"]), serving
    assert summary["exit_codes"] == [0] and summary["memory_mib"]["total_rss"] == [boot["memory"]["total"]["rss_mib"]]
    assert summary["outlived"] == [] and summary["left_after_kill"] == []
    goals = result["goals"]
    assert goals["boot_to_ready"]["worst_s"] == boot["ready_s"]
    assert goals["boot_to_ready"]["met"] is (boot["ready_s"] <= 3.0)
    assert goals["kill_to_serving"]["worst_s"] == boot["kills"][0]["ready_s"]
    assert goals["kill_to_serving"]["met"] is (boot["kills"][0]["ready_s"] <= 1.0)
    assert goals["idle_rss"]["met"] is (boot["memory"]["total"]["rss_mib"] <= 600) and goals["idle_rss"]["met"]
    assert any("RestartSec" in note for note in result["notes"])
    assert not any("Wyoming child" in note for note in result["notes"])


def test_no_ready_in_time_is_one_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    settings = Settings(models=ModelsSettings(store=tmp_path / "store"))
    before = descendants(os.getpid())
    options = SupervisorBenchOptions(repeat=1, kills=1, baseline_boot=False, timeout_s=0.3)
    with pytest.raises(ApplianceError, match=r"within 0.3 s; the last lines of its output"):
        run(settings, options)
    assert descendants(os.getpid()) <= before
    for kills in (0, 5):
        with pytest.raises(ApplianceError, match="kills per boot must be 1 to 4"):
            run(settings, SupervisorBenchOptions(kills=kills))


def test_an_aborted_boot_leaves_nothing_of_its_session(tmp_path: Path) -> None:
    """Aborted once the API answers: the appliance stops and its session is empty."""

    async def main() -> None:
        app = SpawnedAppliance(tmp_path / "b", {}, tmp_path / "store", SupervisorBenchOptions(timeout_s=45))
        try:
            await app.spawn()
            await app.until("GET /health answered", app.health)
        finally:
            await app.close()
        assert app.proc is not None and app.proc.returncode is not None
        assert session_members({app.proc.pid}) == set()

    asyncio.run(main())


def test_a_process_that_ignores_sigterm_and_leaves_its_group_is_still_cleaned_up(tmp_path: Path) -> None:
    """A stand-in for the appliance that ignores SIGTERM and starts a child in a process group of its own (still
    in its session, out of reach of killpg): close() finds and kills both."""
    stubborn = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen(['sleep', '300'], process_group=0); time.sleep(300)")

    async def main() -> None:
        app = SpawnedAppliance(tmp_path / "b", {}, tmp_path / "store", SupervisorBenchOptions(timeout_s=1))
        app.argv = [sys.executable, "-c", stubborn]
        try:
            await app.spawn()
            assert app.proc is not None
            pid = app.proc.pid
            _, (child,) = await app.until("the child", lambda: session_members({pid}) - {pid})
            with pytest.raises(ApplianceError, match="no READY=1 within 1 s"):
                await app.come_up(0, wyoming=False)
        finally:
            await app.close()
        assert app.proc.returncode is not None and not alive(child) and session_members({pid}) == set()

    asyncio.run(main())
