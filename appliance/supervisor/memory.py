"""The memory guard: shed load before the kernel's OOM killer (or systemd's MemoryMax) ends the appliance.

Readings, each optional: the memory PSI of our cgroup ("some avg10", the share of the last 10 s in which a task
waited on memory; cgroup v2 ``memory.pressure``, else /proc/pressure/memory), our cgroup's working set against
its limit (v2 ``memory.current`` less the inactive file cache of ``memory.stat``, against the lower of
``memory.max`` and ``memory.high``; v1 usage and limit likewise), and
/proc/meminfo's MemAvailable. Above any high threshold the guard calls ``shed(reason)`` (unload idle models,
turn new calls away with 503); it calls ``recover()`` only once every reading is below its low threshold, so
it does not flap. Paths are injectable: tests use fake /proc and cgroup trees.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


@dataclass(frozen=True)
class MemoryOptions:
    """Thresholds (high: start shedding; low: recover when all are back under) and where to read."""

    interval_s: float = 2.0  # how often to read
    psi_high: float = 40.0  # % of the last 10 s some task stalled on memory
    psi_low: float = 10.0
    usage_high: float = 0.90  # cgroup usage / limit
    usage_low: float = 0.80
    available_low_mb: float = 150.0  # MemAvailable under this: shed...
    available_ok_mb: float = 300.0  # ...until it is over this again
    proc: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryReading:
    psi_some_avg10: float | None = None
    current_bytes: int | None = None
    limit_bytes: int | None = None
    available_bytes: int | None = None

    @property
    def usage(self) -> float | None:
        if self.current_bytes is None or not self.limit_bytes:
            return None
        return self.current_bytes / self.limit_bytes


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _number(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None  # absent, or "max"
    value = int(text.strip())
    return value if value < UNLIMITED else None


def parse_psi(text: str) -> float | None:
    """"some avg10=1.23 avg60=… total=…" → 1.23."""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "some":
            for item in rest.split():
                name, _, value = item.partition("=")
                if name == "avg10":
                    with contextlib.suppress(ValueError):
                        return float(value)
    return None


def parse_meminfo(text: str, key: str = "MemAvailable") -> int | None:
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return None


def _cgroups(proc: Path) -> dict[str, str]:
    """Our cgroup per hierarchy from /proc/self/cgroup: "" for the v2 one, "memory" for the v1 controller."""
    out: dict[str, str] = {}
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                out.setdefault(controller, parts[2])
    return out


def _working_set(usage: int | None, stat: str | None, key: str) -> int | None:
    """The cgroup's usage less its inactive file cache (what the kernel reclaims first without trouble; the
    working set, as the kernel's own OOM accounting and cAdvisor see it). Model files read at load time stay in
    that cache and would otherwise count as pressure."""
    if usage is None or not stat:
        return usage
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return max(0, usage - int(value))
    return usage


def read_memory(options: MemoryOptions) -> MemoryReading:
    """One reading (blocking file reads: call it in a thread)."""
    groups = _cgroups(options.proc)
    psi = current = limit = None
    if "" in groups:
        rel = groups[""].lstrip("/")
        for base in (options.cgroup_root, options.cgroup_root / "unified"):
            folder = base / rel
            if (folder / "cgroup.controllers").exists() or (folder / "memory.current").exists():
                text = _read(folder / "memory.pressure")
                psi = parse_psi(text) if text else None
                current = _working_set(_number(_read(folder / "memory.current")),
                                       _read(folder / "memory.stat"), "inactive_file")
                limits = [n for n in (_number(_read(folder / f)) for f in ("memory.max", "memory.high")) if n]
                limit = min(limits) if limits else None
                break
    if current is None and "memory" in groups:
        folder = options.cgroup_root / "memory" / groups["memory"].lstrip("/")
        current = _working_set(_number(_read(folder / "memory.usage_in_bytes")), _read(folder / "memory.stat"),
                               "total_inactive_file")
        limit = _number(_read(folder / "memory.limit_in_bytes"))
    if psi is None:
        text = _read(options.proc / "pressure" / "memory")
        psi = parse_psi(text) if text else None
    available = parse_meminfo(_read(options.proc / "meminfo") or "")
    return MemoryReading(psi, current, limit, available)


def assess(reading: MemoryReading, options: MemoryOptions, shedding: bool) -> str | None:
    """Why we are (still) under pressure, or None. With ``shedding`` the low thresholds apply (hysteresis)."""
    psi_limit = options.psi_low if shedding else options.psi_high
    usage_limit = options.usage_low if shedding else options.usage_high
    available_floor = (options.available_ok_mb if shedding else options.available_low_mb) * 2**20
    if reading.psi_some_avg10 is not None and reading.psi_some_avg10 >= psi_limit:
        return f"memory pressure {reading.psi_some_avg10:.0f}% (some avg10)"
    usage = reading.usage
    if usage is not None and usage >= usage_limit:
        return f"cgroup memory at {usage:.0%} of its limit"
    if reading.available_bytes is not None and reading.available_bytes < available_floor:
        return f"only {reading.available_bytes >> 20} MiB available"
    return None


@dataclass
class MemoryGuard:
    """Reads every ``interval_s``; ``shed(reason)`` on entering pressure, ``recover()`` on leaving it. Either
    callback may be a coroutine function; an exception in one is logged, never fatal."""

    options: MemoryOptions
    shed: Callable[[str], Any]
    recover: Callable[[], Any]
    shedding: bool = False
    reason: str | None = None
    last: MemoryReading = field(default_factory=MemoryReading)
    sheds: int = 0

    async def check(self) -> bool:
        """One reading and, if it crosses a threshold, the transition; whether we are shedding now."""
        self.last = await asyncio.to_thread(read_memory, self.options)
        reason = assess(self.last, self.options, self.shedding)
        if reason and not self.shedding:
            self.shedding, self.reason = True, reason
            self.sheds += 1
            log.warning("shedding load: %s", reason)
            await self._call(self.shed, reason)
        elif reason and self.shedding:
            self.reason = reason
        elif reason is None and self.shedding:
            self.shedding, self.reason = False, None
            log.info("memory pressure over: accepting new calls again")
            await self._call(self.recover)
        return self.shedding

    async def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("memory guard callback failed")

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.options.interval_s)

    def status(self) -> dict[str, Any]:
        return {"shedding": self.shedding, "reason": self.reason, **asdict(self.last)}
