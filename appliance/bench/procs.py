"""Processes seen through /proc for the benchmarks: memory (RSS, its peak, PSS), liveness, descendants, the
members of a session (what an `appliance run` spawned with start_new_session may leave behind); and stopping
a child for good."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from appliance.supervisor.memory import parse_meminfo


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS, its peak (VmHWM) and, when readable, PSS of one process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    out = {"rss_mib": mib(parse_meminfo(status, "VmRSS")), "rss_peak_mib": mib(parse_meminfo(status, "VmHWM"))}
    with contextlib.suppress(OSError):
        pss = parse_meminfo(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
        if pss is not None:
            out["pss_mib"] = mib(pss)
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of one process, in MiB (cheap enough to sample several times a second)."""
    return mib(parse_meminfo(Path(f"/proc/{pid}/status").read_text(), "VmRSS"))


def mib(value: int | None) -> float:
    return round((value or 0) / 2**20, 1)


def processes() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after the command name: state, ppid, pgrp, session, …"""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            out[int(stat.parent.name)] = stat.read_text().rpartition(")")[2].split()
    return out


def alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int) -> set[int]:
    procs, todo = processes(), [pid]
    out: set[int] = set()
    while todo:
        parent = str(todo.pop())
        found = {p for p, f in procs.items() if len(f) > 1 and f[1] == parent} - out
        out |= found
        todo.extend(found)
    return out


def session_members(leaders: set[int]) -> set[int]:
    """Running processes whose process group or session is one of ``leaders``' (spawned with
    start_new_session, so both ids are the leader's pid)."""
    ids = {str(pid) for pid in leaders}
    return {p for p, f in processes().items() if len(f) > 3 and f[0] != "Z" and (f[2] in ids or f[3] in ids)}


def stop(proc: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout_s``; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)
