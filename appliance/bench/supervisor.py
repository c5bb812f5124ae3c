"""`appliance bench supervisor`: `appliance run` booted, killed and stopped as systemd would, in a subprocess.

Each boot spawns ``python -m appliance --config <tmp> run`` with a bound NOTIFY_SOCKET and WATCHDOG_USEC, API, SIP
and Wyoming (a child process) on free loopback ports, and the caller's model store, hw, runtime and voice settings:

- boot → READY=1 (spawn → the datagram's arrival) and → models warm (GET /health "ready": true), against what every
  boot pays first, the interpreter and the CLI's imports (``python -m appliance --help``, timed in the same run);
- kill -9 of the Wyoming child → serving again (a new child answers Describe with Info on the STT port) and →
  /health shows it ready under a new pid; each kill of a boot with its ordinal, as the backoff doubles;
- memory after the models are warm and ``idle_s`` of rest: VmRSS, its peak (VmHWM) and PSS of every process;
- SIGTERM → exit, the exit code, and any child that outlived the supervisor.

A baseline boot with an empty model store shows what the models add to each figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import tomli_w

from appliance.bench.voice import latency_stats
from appliance.cli.run_cmd import CHILD_ENV_DROP
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.models import ModelStore, default_store_path, load_catalog
from appliance.supervisor.memory import parse_meminfo
from appliance.supervisor.service import RestartPolicy

Progress = Callable[[str], None]
GOAL_READY_S, GOAL_SERVING_S, GOAL_RSS_MIB = 3.0, 1.0, 600.0  # issue 6
PASSED_THROUGH = {"hw", "runtime", "voice", "models"}  # the caller's settings that choose and load the models
POLICY = RestartPolicy()  # what `appliance run` uses
POLL_S = 0.02
NOTES = [
    "The API and the phone are asyncio tasks on the supervisor's loop: they cannot be kill -9'ed on their own (a "
    "kill -9 of the supervisor is systemd's to restart); only the Wyoming child is killed here.",
    "READY=1 waits for every service; the Wyoming child is ready once its STT port accepts, which `appliance "
    "wyoming` opens after loading its models: boot → READY includes that load (the in-process models warm apart).",
    "The Wyoming child loads its own copy of the models. The RSS sum counts shared pages (interpreter, libraries, "
    "mapped files) twice, the PSS sum splits them; the goal is judged on the RSS sum.",
]


@dataclass(frozen=True)
class SupervisorBenchOptions:
    repeat: int = 3  # boots with the models, and `--help` runs for the baseline
    kills: int = 2  # kill -9 of the Wyoming child per boot, one after the other (fewer than POLICY.crash_limit)
    idle_s: float = 5.0  # rest after the models are warm, before memory is read
    baseline_boot: bool = True  # one more boot first, with an empty model store
    timeout_s: float = 180.0  # for READY=1, and for each wait after it (warm, serving again, exit)
    watchdog_usec: int = 2_000_000


def planned_steps(options: SupervisorBenchOptions) -> int:
    """Progress steps: each `--help` run; per boot READY, warm, each kill and the stop."""
    return options.repeat + (options.repeat + options.baseline_boot) * (3 + options.kills)


@dataclass
class Kill:
    nth: int  # within its boot: 1 is the first failure
    backoff_s: float  # the delay the restart policy adds before this restart
    pid: int
    serving_s: float  # SIGKILL → the STT port answers Describe with Info
    health_s: float  # SIGKILL → /health shows the Wyoming service ready with a new pid
    new_pid: int | None


@dataclass
class Boot:
    store: str
    ready_s: float  # spawn → READY=1 arrived
    api_s: float  # spawn → GET /health first answered
    warm_s: float  # spawn → GET /health "ready": true
    status: str  # the STATUS= sent with READY=1
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # by process, and "total"; MiB
    kills: list[Kill] = field(default_factory=list)
    stop_s: float = 0.0  # SIGTERM → exit
    exit_code: int | None = None
    outlived: list[int] = field(default_factory=list)  # children alive after the supervisor exited
    watchdog_pings: int = 0


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


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS, its peak (VmHWM) and, when readable, PSS of one process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    out = {"rss_mib": _mib(parse_meminfo(status, "VmRSS")), "rss_peak_mib": _mib(parse_meminfo(status, "VmHWM"))}
    with contextlib.suppress(OSError):
        pss = parse_meminfo(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
        if pss is not None:
            out["pss_mib"] = _mib(pss)
    return out


def _mib(value: int | None) -> float:
    return round((value or 0) / 2**20, 1)


def _alive(pid: int, marker: str = "") -> bool:
    """Running (not a zombie) and, when ``marker`` is given, with it in its command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and marker in cmdline


def _children_of(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                out.add(int(stat.parent.name))
    return out


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def _describes(port: int) -> bool:
    """A Wyoming server on ``port`` answers Describe with Info."""
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    try:
        async with asyncio.timeout(1.0), AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            return event is not None and Info.is_type(event.type)
    except (OSError, TimeoutError):
        return False


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") and k not in CHILD_ENV_DROP}


class _Appliance:
    """One `appliance run` in a subprocess (its own session): its notify socket, output file and ports."""

    def __init__(self, root: Path, passed: dict[str, Any], store: Path, options: SupervisorBenchOptions) -> None:
        root.mkdir(parents=True)
        self.root, self.store, self.options = root, store, options
        self.api, sip, self.stt, tts = _free_ports(4)
        config = {**passed, "models": {**passed.get("models", {}), "store": str(store)},
                  "api": {"host": "127.0.0.1", "port": self.api, "keys_file": str(root / "api-keys.json")},
                  "sip": {"host": "127.0.0.1", "port": sip},
                  "wyoming": {"enabled": True, "stt_uri": f"tcp://127.0.0.1:{self.stt}",
                              "tts_uri": f"tcp://127.0.0.1:{tts}"},
                  "bot": {"records_dir": str(root / "calls")}}
        self.config = root / "appliance.toml"
        self.config.write_text(tomli_w.dumps(config))
        self.messages: list[tuple[float, str]] = []
        self.children: set[int] = set()
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api}", timeout=5)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(root / "notify"))
        self.sock.setblocking(False)
        self.output: IO[bytes] = open(root / "output.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.started = 0.0

    async def spawn(self) -> None:
        self.reader = asyncio.create_task(self._receive())
        env = _env() | {"NOTIFY_SOCKET": str(self.root / "notify"), "WATCHDOG_USEC": str(self.options.watchdog_usec)}
        self.started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance", "--config", str(self.config), "run", stdin=asyncio.subprocess.DEVNULL,
            stdout=self.output, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def fields(self, key: str) -> list[tuple[float, str]]:
        return [(t, line.partition("=")[2]) for t, m in self.messages for line in m.split("\n")
                if line.startswith(key + "=")]

    def error(self, message: str) -> ApplianceError:
        self.output.flush()
        lines = (self.root / "output.log").read_text(errors="replace").splitlines()[-12:]
        return ApplianceError(f"`appliance run`: {message}; the last lines of its output:\n"
                              + "\n".join(f"  {line}" for line in lines))

    async def until(self, what: str, check: Callable[[], Any]) -> tuple[float, Any]:
        """Poll ``check`` (plain or async) until it gives a true value: when, and the value."""
        assert self.proc is not None
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            value = check()
            value = await value if inspect.isawaitable(value) else value
            if value:
                return time.monotonic(), value
            if self.proc.returncode is not None:
                raise self.error(f"exited with code {self.proc.returncode} before {what}")
            if time.monotonic() > deadline:
                raise self.error(f"no {what} within {self.options.timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    async def health(self) -> dict[str, Any] | None:
        try:
            return dict((await self.http.get("/health")).json())
        except (httpx.HTTPError, ValueError):
            return None

    async def wyoming(self, other_than: int | None = None) -> dict[str, Any] | None:
        """The Wyoming service in /health when it is ready (under a pid other than ``other_than``)."""
        health = await self.health()
        view = (health or {}).get("supervisor", {}).get("services", {}).get("wyoming") or {}
        if view.get("ready") and view.get("pid") and view["pid"] != other_than:
            self.children.add(int(view["pid"]))
            return view
        return None

    async def boot(self) -> Boot:
        answered: list[float] = []

        async def warm() -> bool:
            health = await self.health()
            if health is not None and not answered:
                answered.append(time.monotonic())
            if health and health.get("error"):
                raise self.error(f"the models failed to load: {health['error']}")
            return bool(health and health.get("ready"))

        waits = [asyncio.create_task(self.until("READY=1", lambda: self.fields("READY"))),
                 asyncio.create_task(self.until('models warm (GET /health "ready": true)', warm))]
        try:
            (_, ready), (warm_at, _) = await asyncio.gather(*waits)
        finally:
            for wait in waits:
                wait.cancel()
        ready_at = ready[0][0]  # the datagram's arrival
        status = next((s for t, s in self.fields("STATUS") if t == ready_at), "")
        return Boot(str(self.store), round(ready_at - self.started, 3), round(answered[0] - self.started, 3),
                    round(warm_at - self.started, 3), status)

    async def memory(self) -> dict[str, dict[str, float]]:
        assert self.proc is not None
        health = await self.health()
        services = ((health or {}).get("supervisor") or {}).get("services", {})
        pids = {"supervisor": self.proc.pid} | {name: int(v["pid"]) for name, v in services.items() if v.get("pid")}
        procs = {name: process_memory(pid) for name, pid in pids.items()}
        total = {"rss_mib": round(sum(m["rss_mib"] for m in procs.values()), 1)}
        if all("pss_mib" in m for m in procs.values()):
            total["pss_mib"] = round(sum(m["pss_mib"] for m in procs.values()), 1)
        return {**procs, "total": total}

    async def kill(self, nth: int) -> Kill:
        _, view = await self.until("the Wyoming service ready", self.wyoming)
        pid = int(view["pid"])
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await self.until(f"the end of the killed Wyoming child {pid}", lambda: not _alive(pid))
        serving_at, _ = await self.until("a Wyoming Describe answered after kill -9", lambda: _describes(self.stt))
        health_at, new = await self.until("the Wyoming service ready again in /health",
                                          lambda: self.wyoming(other_than=pid))
        backoff = min(POLICY.backoff_initial_s * POLICY.backoff_factor ** (nth - 1), POLICY.backoff_max_s)
        return Kill(nth, backoff, pid, round(serving_at - start, 3), round(health_at - start, 3), new.get("pid"))

    async def stop(self, boot: Boot) -> None:
        assert self.proc is not None
        await self.wyoming()  # the current child, to check that it ends with the supervisor
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.options.timeout_s):
                boot.exit_code = await self.proc.wait()
        except TimeoutError:
            raise self.error(f"still running {self.options.timeout_s:g} s after SIGTERM") from None
        boot.stop_s = round(time.monotonic() - start, 3)
        boot.outlived = sorted(pid for pid in self.children if _alive(pid, "wyoming"))
        boot.watchdog_pings = len(self.fields("WATCHDOG"))

    async def close(self) -> None:
        """Whatever is left after a failure: the supervisor (asked to stop, then killed) and its children, each
        in a session of its own."""
        if self.proc is not None and self.proc.returncode is None:
            self.children |= _children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        for pid in self.children:
            if _alive(pid, "appliance"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.http.aclose()
        self.sock.close()
        self.output.close()


async def _measure(app: _Appliance, label: str, progress: Progress) -> Boot:
    options = app.options
    try:
        await app.spawn()
        boot = await app.boot()
        progress(f"{label}: READY=1 after {boot.ready_s:.2f} s")
        await asyncio.sleep(options.idle_s)
        boot.memory = await app.memory()
        progress(f"{label}: warm after {boot.warm_s:.2f} s, {boot.memory['total']['rss_mib']:.0f} MiB")
        for nth in range(1, options.kills + 1):
            boot.kills.append(await app.kill(nth))
            progress(f"{label}: kill -9 wyoming → serving in {boot.kills[-1].serving_s:.2f} s")
        await app.stop(boot)
        progress(f"{label}: SIGTERM → exit {boot.exit_code} in {boot.stop_s:.2f} s")
        return boot
    finally:
        await app.close()


async def _help_s() -> float:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "appliance", "--help", env=_env(),
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
    for name in ("ready", "warm", "stop"):
        baseline = getattr(empty, f"{name}_s") if empty else None
        summary[name] = _figure([getattr(b, f"{name}_s") for b in boots], baseline,
                                base.get("p50_ms") if name != "stop" else None)
    summary["serving"] = []  # by the kill's ordinal within its boot: the restart policy's delay doubles each time
    for nth in range(1, max((len(b.kills) for b in boots), default=0) + 1):
        kills = [b.kills[nth - 1] for b in boots if len(b.kills) >= nth]
        again = empty.kills[nth - 1].serving_s if empty and len(empty.kills) >= nth else None
        summary["serving"].append({"nth": nth, "backoff_s": kills[0].backoff_s,
                                   **_figure([k.serving_s for k in kills], again),
                                   "health": _figure([k.health_s for k in kills])})
    rss = [b.memory["total"]["rss_mib"] for b in boots]
    summary["memory_mib"] = {"total_rss": rss, "total_pss": [b.memory["total"].get("pss_mib") for b in boots],
                             "empty_store": empty.memory["total"] if empty else None}
    summary["exit_codes"] = [b.exit_code for b in boots]
    summary["outlived"] = sorted({pid for b in boots for pid in b.outlived})
    goals = {"boot_to_ready": _goal(GOAL_READY_S, [b.ready_s for b in boots], "s", "spawn → READY=1, every boot"),
             "kill_to_serving": _goal(GOAL_SERVING_S, [b.kills[0].serving_s for b in boots if b.kills], "s",
                                      "the first kill -9 of each boot (later ones add the doubled backoff)"),
             "idle_rss": _goal(GOAL_RSS_MIB, rss, "mib", "VmRSS of the supervisor + the Wyoming child, models warm")}
    return summary, goals


def run(settings: Settings, options: SupervisorBenchOptions, progress: Progress = lambda step: None,
        ) -> SupervisorBenchResult:
    """The whole benchmark; ApplianceError (with the child's last lines) when a boot never gets somewhere."""
    if not 1 <= options.kills < POLICY.crash_limit:
        raise ApplianceError(f"kills per boot must be 1 to {POLICY.crash_limit - 1}: the supervisor gives up on a "
                             f"service after {POLICY.crash_limit} failures within {POLICY.crash_window_s:g} s")
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
            empty = await _measure(_Appliance(tmp / "b0", passed, tmp / "empty", options), "empty store", progress)
            empty.store = "(empty)"
        boots = [await _measure(_Appliance(tmp / f"b{i}", passed, store, options), f"boot {i}", progress)
                 for i in range(1, options.repeat + 1)]
        return help_s, empty, boots

    with tempfile.TemporaryDirectory(prefix="bench-sv-") as tmp:  # short: sun_path holds 108 bytes
        help_s, empty, boots = asyncio.run(main(Path(tmp)))
    summary, goals = summarise(help_s, boots, empty)
    import appliance

    machine: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "platform": platform.platform(),
               "appliance_bytecode_cached": any((Path(appliance.__file__).parent / "__pycache__").glob("*.pyc")),
               "memory_total_mib": _mib(parse_meminfo(Path("/proc/meminfo").read_text(), "MemTotal"))}
    return SupervisorBenchResult(options, machine, str(store), active, help_s, empty, boots, summary, goals)
