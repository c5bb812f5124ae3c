"""`appliance status`: what the running `appliance run` last wrote to ``STATE_DIR/status.json``.

The supervisor rewrites that file on every change and at exit (`Supervisor.write_status`); this command reads
it, checks that the recorded pid is still alive, and prints a summary and one row per service. The exit code
follows ``systemctl status``: 0 running with every service ready, 1 up but degraded (a service not ready or
failed, new work refused, starting or stopping), 3 not running, 4 the status file cannot be read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    pass

OK, DEGRADED, NOT_RUNNING, UNREADABLE = 0, 1, 3, 4
STATUS_FILE = "status.json"
STATE_STYLES = {"ready": "green", "failed": "bold red", "restarting": "yellow", "starting": "yellow",
                "pending": "yellow", "stopping": "dim", "stopped": "dim"}


class StatusFileError(Exception):
    """status.json exists but cannot be read, or is not what `appliance run` writes."""


@dataclass(frozen=True)
class Snapshot:
    """One reading of the status file: its content, when it was written, and whether its pid is alive."""

    path: Path
    data: dict[str, Any]
    written: float  # the file's mtime
    alive: bool


@dataclass(frozen=True)
class Verdict:
    code: int  # the command's exit code
    summary: str  # one line


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts: it exists, we may not signal it)."""
    if pid <= 0:  # 0 and negative numbers name process groups for kill(), never one process
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def process_uptime(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Seconds since the process started (Linux /proc), or None where that cannot be read."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        started_ticks = int(stat.rpartition(")")[2].split()[19])  # field 22, starttime; comm may hold spaces
        since_boot = float((proc / "uptime").read_text().split()[0])
        return max(0.0, since_boot - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def read_status(path: Path) -> tuple[dict[str, Any], float]:
    """The status file's content and mtime. FileNotFoundError when there is none; StatusFileError when it
    cannot be read or is not a status file."""
    try:
        with path.open("rb") as file:
            raw = file.read()
            written = os.fstat(file.fileno()).st_mtime
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StatusFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise StatusFileError(f"{path} is not valid JSON ({exc})") from None
    problem = _shape_problem(data)
    if problem:
        raise StatusFileError(f"{path} is not a status file written by `appliance run`: {problem}")
    return data, written


def _shape_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("state"), str):
        return 'no "state"'
    if not isinstance(data.get("pid"), int) or isinstance(data.get("pid"), bool):
        return 'no "pid"'
    services = data.get("services", {})
    if not isinstance(services, dict) or not all(isinstance(s, dict) for s in services.values()):
        return '"services" is not an object of objects'
    return None


def judge(data: Mapping[str, Any], alive: bool, written: float, now: float | None = None) -> Verdict:
    """The exit code and a one-line summary of a status file's content (pure)."""
    state, pid = data["state"], data["pid"]
    at = written_at(written, now)
    if state == "stopped":
        return Verdict(NOT_RUNNING, f"not running (stopped; pid {pid}, status last written at {at})")
    if not alive:
        return Verdict(NOT_RUNNING, f"not running (stale status from pid {pid}, last written at {at})")
    services: Mapping[str, Mapping[str, Any]] = data.get("services") or {}
    problems = [f"{name} {s.get('state', 'unknown')}" for name, s in services.items() if not s.get("ready")]
    reasons = [str(r) for r in data.get("refusing") or [] if r != "stopping" or state != "stopping"]
    if reasons:
        problems.append(f"refusing new calls ({', '.join(reasons)})")
    if state == "running" and not problems:
        return Verdict(OK, "running, every service ready")
    label = "degraded" if state == "running" else str(state)
    return Verdict(DEGRADED, f"{label}: {', '.join(problems)}" if problems else label)


def duration(seconds: float) -> str:
    """3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def written_at(written: float, now: float | None = None) -> str:
    ago = (time.time() if now is None else now) - written
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(written))} ({duration(ago)} ago)"


def memory_line(memory: Mapping[str, Any]) -> str:
    """The memory guard's last reading (MemoryGuard.status()), in MiB; only what was readable."""
    mib = 1 << 20
    parts = []
    current, limit = memory.get("current_bytes"), memory.get("limit_bytes")
    if isinstance(current, int):
        parts.append(f"{current // mib} MiB used" + (f" of {limit // mib} MiB ({current / limit:.0%})"
                                                     if isinstance(limit, int) and limit else ""))
    if isinstance(memory.get("available_bytes"), int):
        parts.append(f"{memory['available_bytes'] // mib} MiB available")
    if isinstance(memory.get("psi_some_avg10"), int | float):
        parts.append(f"pressure {memory['psi_some_avg10']:g}% (some avg10)")
    return ", ".join(parts) or "no reading yet"


def _live(service: Mapping[str, Any]) -> str:
    parts = []
    if "calls" in service:
        parts.append(f"{service['calls']}" + (f"/{service['max_calls']}" if "max_calls" in service else "")
                     + " calls")
    if "sessions" in service:
        parts.append(f"{service['sessions']} sessions")
    return ", ".join(parts)


def services_table(services: Mapping[str, Mapping[str, Any]], now: float) -> Table:
    table = Table("service", "state", "since", "restarts", "pid", "listen", "live", "last error")
    for name, s in services.items():
        state = str(s.get("state", "unknown"))
        since = s.get("since")
        errors = [str(s[k]) for k in ("last_error", "health_error") if s.get(k)]
        if s.get("exit_code") is not None:
            errors.append(f"exit code {s['exit_code']}")
        table.add_row(Text(name), Text(state, style=STATE_STYLES.get(state, "")),
                      duration(now - since) if isinstance(since, int | float) else "",
                      str(s.get("restarts", "")), str(s["pid"]) if s.get("pid") else "-",
                      Text(str(s.get("listen", ""))), Text(_live(s)), Text("; ".join(errors), style="red"))
    return table


def render(console: Console, snap: Snapshot, verdict: Verdict, now: float) -> None:
    data = snap.data
    colour = {OK: "green", DEGRADED: "yellow"}.get(verdict.code, "red")
    console.print(f"[bold {colour}]appliance {escape(verdict.summary)}[/]", highlight=False)
    if verdict.code == NOT_RUNNING:
        return
    uptime = process_uptime(data["pid"])
    console.print(f"pid {data['pid']}" + (f", up {duration(uptime)}" if uptime is not None else "")
                  + f"; {escape(str(snap.path))} written {written_at(snap.written, now)}", highlight=False)
    if data.get("refusing"):
        console.print(f"[yellow]refusing new calls:[/] {escape(', '.join(map(str, data['refusing'])))}")
    if "live" in data:
        console.print(f"live calls and sessions: {data['live']}", highlight=False)
    if data.get("models"):
        console.print(f"models: {escape(str(data['models']))}", highlight=False)
    memory = data.get("memory")
    if isinstance(memory, dict):
        console.print(f"memory: {escape(memory_line(memory))}", highlight=False)
        if memory.get("shedding"):
            console.print(f"[bold red]memory pressure, shedding load:[/] {escape(str(memory.get('reason')))}")
    services = data.get("services") or {}
    if services:
        console.print(services_table(services, now))
    else:
        console.print("no services")


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help='The status file plus "alive" as JSON on stdout.'),
    directory: Path | None = typer.Option(
        None, "--state-dir", help="Where `appliance run` writes status.json (default: $STATE_DIRECTORY, else "
                                  "/var/lib/appliance as root, else ~/.local/share/appliance)."),
) -> None:
    """State of the running appliance (`appliance run`): every service's state, restarts, pid, address and last
    error, live calls, models and memory. Exit 0 when running with every service ready, 1 when degraded
    (a service not ready or failed, new work refused, starting or stopping), 3 when not running, 4 when the
    status file cannot be read."""
    from appliance.config.paths import data_root

    path = (directory or data_root()) / STATUS_FILE
    try:
        data, written = read_status(path)
    except FileNotFoundError:
        typer.echo(f"the appliance is not running (no {path}; start it with `appliance run`)")
        raise typer.Exit(NOT_RUNNING) from None
    except StatusFileError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(UNREADABLE) from None
    now = time.time()
    snap = Snapshot(path, data, written, pid_alive(data["pid"]))
    verdict = judge(data, snap.alive, written, now)
    if as_json:
        typer.echo(json.dumps({**data, "alive": snap.alive}, indent=2))
    else:
        render(Console(), snap, verdict, now)
    raise typer.Exit(verdict.code)
