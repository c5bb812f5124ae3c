"""`appliance bench supervisor`: `appliance run` booted, killed, restarted and stopped as systemd would.

Each boot spawns ``python -m appliance --config <tmp> run`` in a session of its own, with a bound NOTIFY_SOCKET
and WATCHDOG_USEC, every service on free loopback ports (all asyncio tasks of that one process) and the
caller's model store, hw, runtime and voice settings. It measures boot → READY=1, → /health, → models warm;
kill -9 of the appliance and its restart after the unit's RestartSec → READY=1, → /health, → a Wyoming Info, →
warm; memory once warm and idle; SIGTERM → exit and anything of its session left. NOTES say how. The baselines,
in the same run: ``python -m appliance --help`` (interpreter and imports) and a boot with an empty model store.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import tomli_w

from appliance.api.keys import KeyStore
from appliance.bench.procs import alive, descendants, mib, process_memory, session_members
from appliance.bench.voice import latency_stats
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.models import ModelStore, default_store_path, load_catalog
from appliance.supervisor.memory import parse_meminfo

Progress = Callable[[str], None]
GOAL_READY_S, GOAL_SERVING_S, GOAL_RSS_MIB = 3.0, 1.0, 600.0  # issue 6
PASSED_THROUGH = {"hw", "runtime", "voice", "models"}  # the caller's settings that choose and load the models
# images/systemd/appliance.service: Restart=on-failure, RestartSec=250ms, StartLimitBurst=5 (the first start
# and four restarts within StartLimitIntervalSec=300; one more and systemd leaves the unit down).
RESTART_SEC, MAX_KILLS = 0.25, 4
ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")  # ours, not the child's
POLL_S = 0.02
DESCRIBE_TIMEOUT_S = 6.0  # the Wyoming server holds a request up to 5 s for warming models, then answers Error
CLOSE_GRACE_S = 10.0  # after a failure: SIGTERM, then SIGKILL
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
NOTES = [
    "Every service (API, phone, Wyoming) is an asyncio task of the one `appliance run` process, sharing one copy "
    "of the models: there is no child to kill. The kill -9 is of the whole appliance, restarted as systemd does "
    "with the unit's Restart=on-failure: once the killed process is reaped (and anything left of its session "
    "killed, as systemd kills the rest of the cgroup), the bench sleeps restart_sec (the unit's RestartSec, "
    "0.25 s) and spawns it again with the same config and notify socket. kill → READY=1 includes that delay "
    "and the new interpreter's start-up.",
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


@dataclass(frozen=True)
class SupervisorBenchOptions:
    repeat: int = 3  # boots with the models, and `--help` runs for the baseline
    kills: int = 2  # kill -9 of the appliance per boot, each restarted as systemd would (1 to MAX_KILLS)
    restart_sec: float = RESTART_SEC  # the unit's RestartSec: from the killed process's end to the new spawn
    idle_s: float = 5.0  # rest after the models are warm, before memory is read
    baseline_boot: bool = True  # one more boot first, with an empty model store
    timeout_s: float = 180.0  # for READY=1, and for each wait after it (warm, serving again, exit)
    watchdog_usec: int = 2_000_000


def planned_steps(options: SupervisorBenchOptions) -> int:
    """Progress steps: each `--help` run; per boot READY, warm, each kill and the stop."""
    return options.repeat + (options.repeat + options.baseline_boot) * (3 + options.kills)


@dataclass
class Kill:
    nth: int  # within its boot
    pid: int  # the killed process
    exit_code: int | None  # as reaped: -9
    gone_s: float  # SIGKILL → the process reaped
    left: list[int]  # processes of its session still running once it was gone (killed before the restart)
    restart_sec: float  # slept between its end and the new spawn
    new_pid: int
    ready_s: float  # SIGKILL → the new process's READY=1: serving again
    api_s: float  # SIGKILL → GET /health first answered by the new process
    wyoming_s: float  # SIGKILL → a Wyoming Describe answered with Info on the STT port
    warm_s: float  # SIGKILL → the new process's /health "ready": true


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
    outlived: list[int] = field(default_factory=list)  # processes of its session alive after it exited
    watchdog_pings: list[int] = field(default_factory=list)  # per process: the first, then each restart


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


@dataclass(frozen=True)
class Notice:
    """One notify datagram: when it arrived, who sent it (None when the kernel did not say) and its fields."""

    at: float
    pid: int | None
    fields: dict[str, str]


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
    """A Wyoming server on ``port`` answers Describe with Info (an Error, "warming", is not yet)."""
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    try:
        async with asyncio.timeout(DESCRIBE_TIMEOUT_S), AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            return event is not None and Info.is_type(event.type)
    except (OSError, TimeoutError, EOFError, ValueError):
        return False


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") and k not in ENV_DROP}


class _Appliance:
    """`appliance run` in a subprocess (a session of its own), restarted after each kill: its notify socket,
    output file and ports, kept across its processes."""

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
        self.argv = [sys.executable, "-m", "appliance", "--config", str(self.config), "run"]
        _, token = KeyStore(root / "api-keys.json").create("bench")  # /health shows pids only with a key
        self.notices: list[Notice] = []
        self.spawns: list[tuple[int, float]] = []  # (pid, spawned at) of each process, the current last
        self.known: set[int] = set()  # descendants seen, in case one left the session
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api}", timeout=5,
                                      headers={"Authorization": f"Bearer {token}"})
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(root / "notify"))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.output: IO[bytes] = open(root / "output.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc: asyncio.subprocess.Process | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def spawn(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(self.sock.fileno(), self._receive)
        env = _env() | {"NOTIFY_SOCKET": str(self.root / "notify"), "WATCHDOG_USEC": str(self.options.watchdog_usec)}
        started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self.output, stderr=asyncio.subprocess.STDOUT,
            env=env, start_new_session=True)
        self.spawns.append((self.proc.pid, started))

    def _receive(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(CREDENTIALS.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = next((CREDENTIALS.unpack(raw[:CREDENTIALS.size])[0] for level, kind, raw in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            lines = data.decode(errors="replace").split("\n")
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            self.notices.append(Notice(time.monotonic(), pid, fields))

    def sent(self, key: str, nth: int = -1) -> list[Notice]:
        """The datagrams with ``key`` from the ``nth`` process (the current one by default)."""
        pid, started = self.spawns[nth]
        return [n for n in self.notices if key in n.fields and n.at >= started and n.pid in (None, pid)]

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
        """GET /health, when the current process answers it."""
        assert self.proc is not None
        try:
            body = dict((await self.http.get("/health")).json())
        except (httpx.HTTPError, ValueError):
            return None
        return body if body.get("supervisor", {}).get("pid", self.proc.pid) == self.proc.pid else None

    async def come_up(self, since: float, wyoming: bool) -> dict[str, Any]:
        """Seconds from ``since`` to READY=1, the first /health answer, models warm and, with ``wyoming``, a
        Describe answered with Info; and the STATUS= sent with READY=1."""
        answered: list[float] = []

        async def warm() -> bool:
            health = await self.health()
            if health is not None and not answered:
                answered.append(time.monotonic())
            if health and health.get("error"):
                raise self.error(f"the models failed to load: {health['error']}")
            return bool(health and health.get("ready"))

        waits = {"ready": self.until("READY=1", lambda: self.sent("READY")),
                 "warm": self.until('models warm (GET /health "ready": true)', warm)}
        if wyoming:
            waits["wyoming"] = self.until("a Wyoming Describe answered with Info", lambda: _describes(self.stt))
        tasks = {name: asyncio.create_task(wait) for name, wait in waits.items()}
        try:
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        done: dict[str, tuple[float, Any]] = {}
        for name, result in zip(tasks, results, strict=True):  # one deadline for all: the earliest milestone missed
            if isinstance(result, BaseException):
                raise result
            done[name] = result
        ready = done["ready"][1][0]  # the first READY=1 datagram: its arrival
        out = {"ready_s": ready.at, "api_s": answered[0], **{f"{k}_s": done[k][0] for k in done if k != "ready"}}
        return {**{k: round(t - since, 3) for k, t in out.items()}, "status": ready.fields.get("STATUS", "")}

    async def boot(self) -> Boot:
        await self.spawn()
        up = await self.come_up(self.spawns[-1][1], wyoming=False)
        return Boot(str(self.store), up["ready_s"], up["api_s"], up["warm_s"], up["status"])

    async def memory(self) -> dict[str, dict[str, float]]:
        assert self.proc is not None
        health = await self.health()
        services = ((health or {}).get("supervisor") or {}).get("services", {})
        procs = {"supervisor": process_memory(self.proc.pid)}
        for name, view in services.items():
            if isinstance(view, dict) and view.get("pid") and int(view["pid"]) != self.proc.pid:
                with contextlib.suppress(OSError):  # gone meanwhile
                    procs[name] = process_memory(int(view["pid"]))
        total = {key: round(sum(m[key] for m in procs.values()), 1) for key in ("rss_mib", "rss_peak_mib")}
        if all("pss_mib" in m for m in procs.values()):
            total["pss_mib"] = round(sum(m["pss_mib"] for m in procs.values()), 1)
        return {**procs, "total": total}

    async def _ended(self, what: str) -> int:
        assert self.proc is not None
        try:
            async with asyncio.timeout(self.options.timeout_s):
                return await self.proc.wait()
        except TimeoutError:
            raise self.error(f"still running {self.options.timeout_s:g} s after {what}") from None

    def left(self) -> list[int]:
        """Processes of the appliance's sessions (or descendants seen) still running, but for the current one."""
        current = {self.proc.pid} if self.proc is not None and self.proc.returncode is None else set()
        found = session_members({pid for pid, _ in self.spawns}) | {p for p in self.known if alive(p)}
        return sorted(found - current - {os.getpid()})

    async def sweep(self) -> list[int]:
        """SIGKILL whatever `left` names (what systemd does to the rest of the cgroup); wait for them to go."""
        left = self.left()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in left) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return left

    async def kill(self, nth: int) -> Kill:
        """kill -9 of the appliance, the restart as systemd's Restart=on-failure, the new process serving."""
        assert self.proc is not None
        pid = self.proc.pid
        self.known |= descendants(pid)
        start = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        code = await self._ended("SIGKILL")
        gone = time.monotonic()
        left = await self.sweep()
        await asyncio.sleep(self.options.restart_sec)
        os.write(self.output.fileno(), f"--- bench: kill -9 of {pid} #{nth}, restarted ---\n".encode())
        await self.spawn()
        up = await self.come_up(start, wyoming=True)
        return Kill(nth, pid, code, round(gone - start, 3), left, self.options.restart_sec, self.spawns[-1][0],
                    up["ready_s"], up["api_s"], up["wyoming_s"], up["warm_s"])

    async def stop(self, boot: Boot) -> None:
        assert self.proc is not None
        self.known |= descendants(self.proc.pid)
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        boot.exit_code = await self._ended("SIGTERM")
        boot.stop_s = round(time.monotonic() - start, 3)
        boot.outlived = self.left()
        boot.watchdog_pings = [len(self.sent("WATCHDOG", nth)) for nth in range(len(self.spawns))]

    async def close(self) -> None:
        """Whatever is left after a failure: the appliance (asked to stop, then killed) and its session."""
        if self.proc is not None and self.proc.returncode is None:
            self.known |= descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(min(CLOSE_GRACE_S, self.options.timeout_s)):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        await self.sweep()
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
        await self.http.aclose()
        self.sock.close()
        self.output.close()


async def _measure(app: _Appliance, label: str, progress: Progress) -> Boot:
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
               "memory_total_mib": mib(parse_meminfo(Path("/proc/meminfo").read_text(), "MemTotal"))}
    return SupervisorBenchResult(options, machine, str(store), active, help_s, empty, boots, summary, goals)
