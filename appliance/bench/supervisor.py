"""`appliance bench supervisor`: `appliance run` booted, killed, restarted and stopped as systemd would.

Each boot spawns ``python -m appliance --config <tmp> run`` in a session of its own, with a bound NOTIFY_SOCKET
and WATCHDOG_USEC, every service on free loopback ports (all asyncio tasks of that one process) and the
caller's model store, hw, runtime and voice settings. It measures boot → READY=1, → /health, → models warm;
kill -9 of the appliance and its restart after the unit's RestartSec → READY=1, → /health, → a Wyoming Info, →
warm; memory once warm and idle; SIGTERM → exit and anything of its session left. NOTES say how. The baselines,
in the same run: ``python -m appliance --help`` (interpreter and imports) and a boot with an empty model store.
The process under test is `bench/spawned.py`; the options and findings are `bench/supervisor_data.py`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.bench.procs import mib
from appliance.bench.spawned import SpawnedAppliance, child_env
from appliance.bench.supervisor_data import MAX_KILLS, Boot, SupervisorBenchOptions
from appliance.bench.voice import latency_stats
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.models import ModelStore, default_store_path, load_catalog
from appliance.supervisor.memory import parse_meminfo

Progress = Callable[[str], None]
GOAL_READY_S, GOAL_SERVING_S, GOAL_RSS_MIB = 3.0, 1.0, 600.0  # issue 6
PASSED_THROUGH = {"hw", "runtime", "voice", "models"}  # the caller's settings that choose and load the models
NOTES = [
    "Every service (API, phone, Wyoming) is an asyncio task of the one `appliance run` process, sharing one copy "
    "of the models: there is no child to kill. The kill -9 is of the whole appliance, restarted as systemd does "
    "with the unit's Restart=on-failure: once the killed process is reaped (and anything left of its session "
    "killed, as systemd kills the rest of the cgroup), the bench sleeps restart_sec (the unit's RestartSec, "
    "0.1 s) and spawns it again with the same config and notify socket. kill → READY=1 includes that delay "
    "and the new interpreter's start-up.",
    "With activation (the default, as images/systemd/appliance.socket), the bench holds the API, SIP (UDP and "
    "TCP) and Wyoming sockets and passes them to every process as systemd does (fds from 3, LISTEN_FDS, "
    "LISTEN_PID): the ports stay open across the kill. Once the killed process is gone, a GET /health on a new "
    "connection and one SIP OPTIONS datagram (no retransmission) are sent: held/sip say when each was answered "
    "(from the SIGKILL) or what became of it. Without activation both find the port closed.",
    "READY=1 means every service listens; the models warm afterwards (model requests get 503 + Retry-After, a "
    "Wyoming request waits up to 5 s, then gets an Error \"warming\"). Serving again is the new process's "
    "READY=1 (the goal); its first /health answer, a Describe answered with Info on the STT port (an Error "
    "counts as not yet) and /health \"ready\": true are timed from the same SIGKILL.",
    "A notify datagram counts for a process when the kernel names it as the sender (SCM_CREDENTIALS, like "
    "systemd's NotifyAccess=main) and it arrived after that process was spawned. watchdog_pings lists the "
    "WATCHDOG=1 datagrams of each process of a boot in order: the first, then one per restart.",
    "Memory is read once per boot, from its first process, after the models are warm and idle_s of rest: "
    "VmRSS, VmHWM and PSS of the appliance process plus any child pid that /health lists under "
    "supervisor.services.*.pid (none: every service is in-process); the total sums them, the goal is judged on "
    "the RSS total.",
    "The appliance is spawned with start_new_session: its session and process group ids are its pid. outlived "
    "lists any process of that session or group, or any descendant seen earlier, still running after it exited "
    "(a kill's left: the same, once the killed process was gone).",
]


def planned_steps(options: SupervisorBenchOptions) -> int:
    """Progress steps: each `--help` run; per boot READY, warm, each kill and the stop."""
    return options.repeat + (options.repeat + options.baseline_boot) * (3 + options.kills)


@dataclass
class SupervisorBenchResult:
    options: SupervisorBenchOptions
    machine: dict[str, Any]
    store: str
    models_active: list[str]
    help_s: list[float]  # `python -m appliance --help`: the baseline
    empty_store: Boot | None
    boots: list[Boot]
    summary: dict[str, Any]
    goals: dict[str, Any]
    notes: list[str] = field(default_factory=lambda: list(NOTES))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _measure(app: SpawnedAppliance, label: str, progress: Progress) -> Boot:
    options = app.options
    try:
        boot = await app.boot()
        progress(f"{label}: READY=1 after {boot.ready_s:.2f} s")
        await asyncio.sleep(options.idle_s)
        boot.memory = await app.memory()
        progress(f"{label}: warm after {boot.warm_s:.2f} s, {boot.memory['total']['rss_mib']:.0f} MiB")
        for nth in range(1, options.kills + 1):
            boot.kills.append(await app.kill(nth))
            progress(f"{label}: kill -9 → READY=1 again in {boot.kills[-1].ready_s:.2f} s")
        await app.stop(boot)
        progress(f"{label}: SIGTERM → exit {boot.exit_code} in {boot.stop_s:.2f} s")
        return boot
    finally:
        await app.close()


async def _help_s() -> float:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "appliance", "--help", env=child_env(),
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise ApplianceError(f"`python -m appliance --help` failed ({proc.returncode}): {err.decode()[-300:]}")
    return round(time.monotonic() - start, 3)


def _figure(seconds: list[float], empty: float | None = None, help_p50_ms: float | None = None) -> dict[str, Any]:
    """ms stats (and the max), with the p50 as ratios against the empty-store boot and against `--help`."""
    out: dict[str, Any] = {**latency_stats(seconds), **({"max_ms": round(1000 * max(seconds), 1)} if seconds else {})}
    if seconds and empty:
        out["vs_empty_store_p50"] = round(out["p50_ms"] / 1000 / empty, 2)
    if seconds and help_p50_ms:
        out["vs_help_p50"] = round(out["p50_ms"] / help_p50_ms, 2)
    return out


def _goal(limit: float, values: list[float], unit: str, measured: str) -> dict[str, Any]:
    """Met when every repetition is within ``limit``."""
    worst = max(values) if values else None
    return {f"goal_{unit}": limit, f"worst_{unit}": worst, "met": worst is not None and worst <= limit,
            "measured": measured}


def summarise(help_s: list[float], boots: list[Boot], empty: Boot | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures over the boots, and the goals."""
    base = _figure(help_s)
    summary: dict[str, Any] = {"help": base}
    for name in ("ready", "api", "warm", "stop"):
        baseline = getattr(empty, f"{name}_s") if empty else None
        summary[name] = _figure([getattr(b, f"{name}_s") for b in boots], baseline,
                                base.get("p50_ms") if name != "stop" else None)
    summary["serving"] = []  # by the kill's ordinal within its boot; the p50 is kill → READY=1
    for nth in range(1, max((len(b.kills) for b in boots), default=0) + 1):
        kills = [b.kills[nth - 1] for b in boots if len(b.kills) >= nth]
        again = empty.kills[nth - 1] if empty and len(empty.kills) >= nth else None
        figures = {key: _figure([getattr(k, f"{key}_s") for k in kills], getattr(again, f"{key}_s", None))
                   for key in ("ready", "gone", "api", "wyoming", "warm")}
        for key in ("held", "sip"):  # requests sent while no process served: answered when, or what became of them
            figures[key] = {**_figure([s for k in kills if (s := getattr(k, f"{key}_s")) is not None]),
                            "outcomes": sorted({getattr(k, key) for k in kills})}
        summary["serving"].append({"nth": nth, "restart_sec": kills[0].restart_sec, **figures.pop("ready"),
                                   **figures})
    rss = [b.memory["total"]["rss_mib"] for b in boots]
    summary["memory_mib"] = {"total_rss": rss, "total_pss": [b.memory["total"].get("pss_mib") for b in boots],
                             "empty_store": empty.memory["total"] if empty else None}
    summary["exit_codes"] = [b.exit_code for b in boots]
    summary["outlived"] = sorted({pid for b in boots for pid in b.outlived})
    summary["left_after_kill"] = sorted({pid for b in boots for k in b.kills for pid in k.left})
    goals = {"boot_to_ready": _goal(GOAL_READY_S, [b.ready_s for b in boots], "s", "spawn → READY=1, every boot"),
             "kill_to_serving": _goal(GOAL_SERVING_S, [b.kills[0].ready_s for b in boots if b.kills], "s",
                                      "kill -9 of the appliance → READY=1 of its restart (RestartSec included), "
                                      "the first kill of each boot"),
             "idle_rss": _goal(GOAL_RSS_MIB, rss, "mib", "VmRSS of the appliance process (+ any child /health "
                                                         "lists), models warm, after idle_s")}
    return summary, goals


def run(settings: Settings, options: SupervisorBenchOptions, progress: Progress = lambda step: None,
        ) -> SupervisorBenchResult:
    """The whole benchmark; ApplianceError (with the child's last lines) when a boot never gets somewhere."""
    if not 1 <= options.kills <= MAX_KILLS:
        raise ApplianceError(f"kills per boot must be 1 to {MAX_KILLS}: the unit's StartLimitBurst=5 allows the "
                             f"first start and {MAX_KILLS} restarts within StartLimitIntervalSec=300")
    store = settings.models.store or default_store_path()
    catalog = load_catalog(settings.models.catalog)
    active = [m.id for m in catalog.models if ModelStore(store).is_active(m.id)]
    passed = settings.model_dump(mode="json", include=PASSED_THROUGH, exclude_none=True)

    async def main(tmp: Path) -> tuple[list[float], Boot | None, list[Boot]]:
        help_s = []
        for _ in range(options.repeat):
            help_s.append(await _help_s())
            progress(f"python -m appliance --help: {help_s[-1]:.2f} s")
        empty = None
        if options.baseline_boot:
            baseline = SpawnedAppliance(tmp / "b0", passed, tmp / "empty", options)
            empty = await _measure(baseline, "empty store", progress)
            empty.store = "(empty)"
        boots = [await _measure(SpawnedAppliance(tmp / f"b{i}", passed, store, options), f"boot {i}", progress)
                 for i in range(1, options.repeat + 1)]
        return help_s, empty, boots

    with tempfile.TemporaryDirectory(prefix="bench-sv-") as tmp:  # short: sun_path holds 108 bytes
        help_s, empty, boots = asyncio.run(main(Path(tmp)))
    summary, goals = summarise(help_s, boots, empty)
    import appliance

    machine: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "platform": platform.platform(),
               "appliance_bytecode_cached": any((Path(appliance.__file__).parent / "__pycache__").glob("*.pyc")),
               "memory_total_mib": mib(parse_meminfo(Path("/proc/meminfo").read_text(), "MemTotal"))}
    return SupervisorBenchResult(options, machine, str(store), active, help_s, empty, boots, summary, goals)
