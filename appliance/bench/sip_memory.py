"""`appliance bench sip --memory N`: whether the phone's memory stays flat under many calls and an overload.

SIPp's plain UAC (``-sn uac``: INVITE, ACK, a pause of ``call_s``, BYE; no audio) calls the phone at ``rate`` per
second, well past its ``max_calls``, in rounds of 100 INVITEs: the phone answers what it can with the product's
call flow (the example flow: a synthesised greeting, a call record written) and turns the rest away with 503.
After each round the resident memory (RSS) of this process is read twice: at its peak during the round, and once
the round's calls have ended and the allocator has handed back what was freed (what the appliance does when it
falls idle, ``allocator.trim``). The goal: no growth after the first 100 INVITEs beyond ``GOAL_GROWTH`` (idle
RSS after the last round against idle RSS after the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bench.procs import rss_mib
from appliance.bench.voice import phrase_caches
from appliance.bot.callbot import flow_app_factory
from appliance.bot.flow import EXAMPLE_FLOW, load_flow
from appliance.bot.records import CallStore
from appliance.runtime import allocator
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.stack import VoiceStack
from appliance.voice.tts import CACHE_BYTES

Progress = Callable[[str], None]

ROUND = 100  # INVITEs per round: one RSS reading each
GOAL_GROWTH = 0.05  # idle RSS after the last round at most 5 % above idle RSS after the first
SETTLE_S = 10.0  # at most this long for a round's last calls (and their BYEs) to end


def rss_mb() -> float:
    """This process's resident memory now, MiB (Linux)."""
    return rss_mib(os.getpid())


@dataclass
class MemoryResult:
    invites: int
    rate_per_s: float
    call_s: float
    max_calls: int
    rss_mb_before: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per 100 INVITEs: counts, RSS peak and idle
    growth_after_first_round: float | None = None  # idle RSS, last round / first round - 1
    goal_met: bool | None = None


async def _peak(sampled: list[float]) -> None:
    while True:
        sampled.append(rss_mb())
        await asyncio.sleep(0.2)


async def run_memory(stack: VoiceStack, sipp: str, invites: int, rate: float = 20.0, call_s: float = 2.0,
                     max_calls: int = 8, rtp_ports: tuple[int, int] = (42000, 42999),
                     progress: Progress = lambda step: None) -> MemoryResult:
    """``invites`` (rounded up to rounds of 100) plain UAC calls into a phone of ``max_calls``."""
    result = MemoryResult(invites=-(-invites // ROUND) * ROUND, rate_per_s=rate, call_s=call_s, max_calls=max_calls)
    flow = load_flow(EXAMPLE_FLOW)
    with tempfile.TemporaryDirectory(prefix="bench-sip-memory-") as tmp, phrase_caches(stack, CACHE_BYTES):
        factory = flow_app_factory(stack, flow, CallStore(Path(tmp) / "calls"))
        phone = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=rtp_ports, max_calls=max_calls),
                      lambda info: factory)
        await phone.start()
        try:
            await asyncio.to_thread(allocator.trim)
            result.rss_mb_before = rss_mb()
            for number in range(result.invites // ROUND):
                sampled: list[float] = []
                sampler = asyncio.create_task(_peak(sampled))
                before = dict(answered=phone.stats.answered, busy=phone.stats.rejected_busy)
                started = time.monotonic()
                code = await _uac(sipp, phone.agent.port, rate, call_s, Path(tmp) / f"round-{number}.csv")
                deadline = time.monotonic() + SETTLE_S
                while phone.calls and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                await asyncio.to_thread(allocator.trim)
                result.rounds.append({
                    "invites": (number + 1) * ROUND, "sipp_exit": code, "wall_s": round(time.monotonic() - started, 1),
                    "answered": phone.stats.answered - before["answered"],
                    "turned_away": phone.stats.rejected_busy - before["busy"], "left_up": len(phone.calls),
                    "rss_mb_peak": max(sampled, default=0.0), "rss_mb_idle": rss_mb()})
                progress(f"memory: {(number + 1) * ROUND} INVITEs")
        finally:
            await phone.stop()
    first, last = result.rounds[0]["rss_mb_idle"], result.rounds[-1]["rss_mb_idle"]
    if len(result.rounds) > 1 and first:
        result.growth_after_first_round = round(last / first - 1, 4)
        result.goal_met = result.growth_after_first_round <= GOAL_GROWTH
    return result


async def _uac(sipp: str, port: int, rate: float, call_s: float, stats: Path) -> int:
    """One round: ROUND INVITEs at ``rate`` from SIPp's built-in UAC, bounded in time; SIPp's exit code
    (1: some calls failed, as every 503 does for the plain UAC)."""
    limit_s = ROUND / rate + call_s + 60
    proc = await asyncio.create_subprocess_exec(
        sipp, "-sn", "uac", "-i", "127.0.0.1", "-p", "0", "-r", f"{rate:g}", "-m", str(ROUND),
        "-d", str(int(call_s * 1000)), "-timeout", f"{int(limit_s)}s", "-nostdin", "-trace_stat", "-stf", str(stats),
        f"127.0.0.1:{port}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(proc.wait(), limit_s + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
