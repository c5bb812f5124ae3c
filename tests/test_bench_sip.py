"""`appliance bench sip` at a tiny size: real SIPp callers speaking a prompt to the echo bot, one call then two
for a capacity of one; the second gets 503 with Retry-After and counts as turned away, not failed. Without
sipp, the command says so in one line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest

from appliance.bench.sip import SipBenchOptions, find_sipp, planned_calls, run
from appliance.bench.sip_memory import GOAL_GROWTH, run_memory
from appliance.voice.stack import VoiceStack

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="needs sipp (Debian sip-tester, installed by make test)")


def test_one_call_then_one_past_capacity(stack: VoiceStack) -> None:
    options = SipBenchOptions(levels=(1,), max_calls=1, beyond=1, turns=1, min_turns=1, listen_s=3.0,
                              rtp_ports=(41000, 41199))
    steps: list[str] = []
    result = json.loads(json.dumps(run(stack, options, steps.append).to_json()))
    assert len(steps) == planned_calls(options) == 1 + 1 + 2  # the warm-up call, then the two levels
    base, over = result["levels"]
    assert (base["concurrency"], base["attempted"], base["answered"], base["failed"]) == (1, 1, 1, 0), base
    assert base["turns_measured"] == base["turns_expected"] == 1, base
    assert 0 < base["latency"]["p50_ms"] < 3000 and base["p50_vs_1_call"] == base["p95_vs_1_call"] == 1.0
    assert base["wer"] == 0.0 and base["errors_logged"] == 0, base
    assert (over["concurrency"], over["attempted"], over["answered"]) == (2, 2, 1), over
    assert over["turned_away"] == 1 and over["failed"] == 0 and over["retry_after_s"] == [10], over
    assert over["phone"]["rejected_busy"] == 1 and over["phone"]["ended"] == {"caller hung up": 1}
    assert over["turns_measured"] == 1 and over["p95_vs_1_call"] > 0, over
    for key in ("cpu_cores", "sipp_cpu_cores", "asr_partials_dropped", "wall_s"):
        assert over[key] >= 0
    assert over["loop_lag_ms"]["n"] > 0 and over["latency"]["max_ms"] >= over["latency"]["p95_ms"]
    assert result["goal"]["beyond_capacity_turned_away_as_expected"] is True
    assert result["goal"]["max_concurrency_within_p95"] in (0, 1)
    assert [p["name"] for p in result["prompts"]][:1] == ["activated"] and result["options"]["max_calls"] == 1


def test_without_sipp_one_clear_line() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-m", "appliance", "bench", "sip"], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "sipp not found" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_memory_stage_reads_rss_per_hundred_invites_of_an_overload(stack: VoiceStack) -> None:
    """200 plain SIPp UAC INVITEs at 20/s into a phone of capacity 2 (the example flow answers, greeting and
    record included): two rounds, each with calls answered and calls turned away, RSS read at the peak and
    idle, and the growth between the rounds' idle readings."""
    result = asyncio.run(run_memory(stack, find_sipp(), 150, rate=20, call_s=1.0, max_calls=2,
                                    rtp_ports=(41200, 41399)))
    assert result.invites == 200 and [r["invites"] for r in result.rounds] == [100, 200]
    for r in result.rounds:
        assert r["answered"] >= 2 and r["turned_away"] >= 50 and r["answered"] + r["turned_away"] <= 100, r
        assert r["left_up"] == 0 and r["rss_mb_peak"] >= r["rss_mb_idle"] > 100, r
    assert result.rss_mb_before > 100 and result.growth_after_first_round is not None
    assert result.goal_met == (result.growth_after_first_round <= GOAL_GROWTH)
