"""`appliance status` against real status files: hand-written ones for each exit code (a live pid: this
process; a dead one: a reaped `sleep 0`), and the file a real Supervisor writes while it runs and at exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from appliance.cli import status_cmd
from appliance.cli.state import CliState
from appliance.config import Settings
from appliance.supervisor import (
    MemoryGuard,
    MemoryOptions,
    Notifier,
    RestartPolicy,
    Service,
    ServiceSpec,
    Supervisor,
    SupervisorOptions,
    TaskService,
)

ENV = {"COLUMNS": "200"}


def cli() -> typer.Typer:
    """The command as main.py wires it: the global callback puts a CliState in ctx.obj."""
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)

    @app.callback()
    def _options(ctx: typer.Context) -> None:
        ctx.obj = CliState(None)

    app.command("status")(status_cmd.status)
    return app


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli(), ["status", *args], env={**ENV, **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


def unit(state: str = "ready", **extra: Any) -> dict[str, Any]:
    """A service as Unit.view() writes it."""
    return {"state": state, "ready": state == "ready", "alive": state == "ready", "restarts": 0, "last_error": None,
            "pid": None, "since": round(time.time() - 75, 3), "depends_on": [], **extra}


def write(folder: Path, pid: int | None = None, state: str = "running", refusing: list[str] | None = None,
          **services: dict[str, Any]) -> Path:
    data = {"state": state, "ready": state == "running", "pid": os.getpid() if pid is None else pid,
            "refusing": refusing or [], "live": 1, "services": services or {"api": unit()},
            "models": "models ready",
            "memory": {"shedding": False, "reason": None, "psi_some_avg10": 0.0, "current_bytes": 300 << 20,
                       "limit_bytes": 1536 << 20, "available_bytes": 800 << 20}}
    path = folder / "status.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_running_and_every_service_ready_is_0(tmp_path: Path) -> None:
    write(tmp_path, api=unit(sessions=1, listen="0.0.0.0:8080"),
          wyoming=unit(pid=4321, listen="127.0.0.1:10300", restarts=2))
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "appliance running, every service ready" in out
    assert f"pid {os.getpid()}, up " in out and "live calls and sessions: 1" in out and "models: models ready" in out
    assert "memory: 300 MiB used of 1536 MiB (20%), 800 MiB available, pressure 0% (some avg10)" in out
    assert "0.0.0.0:8080" in out and "1 sessions" in out and "4321" in out and "127.0.0.1:10300" in out
    assert "1 min 15 s" in out  # ready since


def test_a_failed_service_or_refusing_is_degraded_1(tmp_path: Path) -> None:
    write(tmp_path, api=unit(), sip=unit("failed", restarts=4, last_error="exited with code 3: [/red] no card"))
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "appliance degraded: sip failed" in result.stdout
    assert "exited with code 3: [/red] no card" in result.stdout  # shown as text, not read as markup

    write(tmp_path, refusing=["memory"], api=unit())
    data = json.loads((tmp_path / "status.json").read_text())
    data["memory"] |= {"shedding": True, "reason": "only 90 MiB available"}
    (tmp_path / "status.json").write_text(json.dumps(data))
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "degraded: refusing new calls (memory)" in result.stdout
    assert "memory pressure, shedding load: only 90 MiB available" in result.stdout


def test_starting_is_1(tmp_path: Path) -> None:
    write(tmp_path, state="starting", api=unit("starting"))
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 1 and "appliance starting: api starting" in result.stdout


def test_no_status_file_is_not_running_3(tmp_path: Path) -> None:
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 3
    assert result.stdout.strip() == (f"the appliance is not running (no {tmp_path / 'status.json'}; start it with "
                                     "`appliance run`)")


def test_a_dead_pid_is_a_stale_status_3(tmp_path: Path) -> None:
    pid = dead_pid()
    write(tmp_path, pid=pid)
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 3
    assert f"not running (stale status from pid {pid}, last written at " in result.stdout
    assert "service" not in result.stdout  # no table for a dead appliance

    result = invoke("--state-dir", str(tmp_path), "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["alive"] is False


@pytest.mark.parametrize("content", ['{"state": "runn', "[1, 2]", '{"state": "running"}', "\udcff"])
def test_a_corrupt_status_file_is_one_error_4(tmp_path: Path, content: str) -> None:
    (tmp_path / "status.json").write_bytes(content.encode(errors="surrogateescape"))
    result = invoke("--state-dir", str(tmp_path))
    assert result.exit_code == 4
    assert result.stderr.startswith("error: ") and str(tmp_path / "status.json") in result.stderr
    assert result.stdout == ""


def test_json_is_the_file_plus_alive(tmp_path: Path) -> None:
    path = write(tmp_path, sip=unit("restarting", restarts=1))
    result = invoke("--state-dir", str(tmp_path), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {**json.loads(path.read_text()), "alive": True}


def test_the_state_directory_is_the_data_root_of_every_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$STATE_DIRECTORY's first entry (the unit's StateDirectory=), else /var/lib/appliance as root, else the XDG
    data dir: status.json, the API keys, the model store and the call records all follow it."""
    from appliance.bot.routing import records_root
    from appliance.cli.serve_cmd import key_store
    from appliance.config.paths import data_root
    from appliance.models import default_store_path

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_root() == (Path("/var/lib/appliance") if os.geteuid() == 0 else tmp_path / "xdg" / "appliance")
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/var/lib/other")
    settings = Settings()
    assert data_root() == tmp_path and key_store(settings).path == tmp_path / "api-keys.json"
    assert default_store_path() == tmp_path / "models" and records_root(settings.bot) == tmp_path / "calls"
    write(tmp_path)
    assert invoke().exit_code == 0  # found without --state-dir


def test_judge_and_helpers() -> None:
    running = {"state": "running", "pid": 1, "refusing": [], "services": {"api": unit()}}
    assert status_cmd.judge(running, True, 0.0).code == 0
    assert status_cmd.judge({**running, "state": "stopped"}, True, 0.0).code == 3  # the pid may be reused
    stopping = {**running, "state": "stopping", "refusing": ["stopping"]}
    assert status_cmd.judge(stopping, True, 0.0) == status_cmd.Verdict(1, "stopping")
    assert not status_cmd.pid_alive(0) and not status_cmd.pid_alive(-1) and status_cmd.pid_alive(os.getpid())
    assert status_cmd.duration(59) == "59 s" and status_cmd.duration(3 * 3600 + 120) == "3 h 2 min"
    assert status_cmd.memory_line({"shedding": False}) == "no reading yet"


# -- the file the real supervisor writes -------------------------------------------------------------------------
class Idle(TaskService):
    """Serves until stopped."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._quit = asyncio.Event()

    async def run(self) -> None:
        self.set_ready()
        await self._quit.wait()

    async def shutdown(self) -> None:
        self._quit.set()

    def health(self) -> dict[str, Any]:
        return {"listen": "127.0.0.1:8080", "sessions": 0}


class Broken(TaskService):
    async def run(self) -> None:
        raise RuntimeError("no sound card")


class Factory:
    def __init__(self, **builders: type[TaskService]) -> None:
        self.builders = builders

    def plan(self, settings: Any) -> list[ServiceSpec]:
        return [ServiceSpec(name) for name in self.builders]

    def make(self, spec: ServiceSpec, settings: Any) -> Service:
        return self.builders[spec.name](spec.name)


@pytest.mark.parametrize(("builders", "code", "line"), [
    ({"api": Idle}, 0, "appliance running, every service ready"),
    ({"api": Idle, "sip": Broken}, 1, "appliance degraded: sip failed"),
])
def test_the_status_file_of_a_real_supervisor(tmp_path: Path, builders: dict[str, type[TaskService]], code: int,
                                              line: str) -> None:
    status_file = tmp_path / "state" / "status.json"
    running = tmp_path / "running"
    running.mkdir()
    options = SupervisorOptions(restart=RestartPolicy(crash_limit=1), status_file=status_file, poll_s=0.01,
                                status_refresh_s=0.05)

    async def main() -> None:
        guard = MemoryGuard(MemoryOptions(), shed=lambda reason: None, recover=lambda: None)
        await guard.check()  # a real reading of this machine

        def extras() -> dict[str, Any]:
            return {"models": "models ready", "memory": guard.status(), "notes": ["models ready"]}

        sup = Supervisor(Factory(**builders), None, options, Notifier({}), extras)
        await sup.start()
        try:
            deadline = time.monotonic() + 10
            while not (status_file.exists() and json.loads(status_file.read_text())["state"] == "running"):
                assert time.monotonic() < deadline, "timed out waiting for a running status file"
                await asyncio.sleep(0.02)
            (running / "status.json").write_bytes(status_file.read_bytes())
        finally:
            await sup.stop(grace_s=0)

    asyncio.run(main())
    result = invoke("--state-dir", str(running))
    assert result.exit_code == code, result.output
    assert line in result.stdout and "127.0.0.1:8080" in result.stdout and "models: models ready" in result.stdout
    assert "memory: " in result.stdout and "no reading yet" not in result.stdout
    if "sip" in builders:
        assert "RuntimeError: no sound card" in result.stdout

    result = invoke("--state-dir", str(status_file.parent))  # what it wrote at exit
    assert result.exit_code == 3 and f"not running (stopped; pid {os.getpid()}" in result.stdout
    as_json = json.loads(invoke("--state-dir", str(status_file.parent), "--json").stdout)
    assert as_json["state"] == "stopped" and as_json["alive"] is True


def test_a_late_refresh_never_overwrites_the_final_status(tmp_path: Path) -> None:
    """A refresh read before the final state but written after it (its thread outlived its cancelled awaiter)
    is dropped: the file keeps the newest state."""
    from appliance.supervisor.supervisor import StatusFile

    path, writes = tmp_path / "status.json", StatusFile()
    refresh, final = writes.next(), writes.next()
    assert writes.write(path, {"state": "stopped"}, final)
    assert not writes.write(path, {"state": "running"}, refresh)
    assert json.loads(path.read_text())["state"] == "stopped"
    assert writes.write(path, {"state": "starting"}, writes.next())  # a later one still lands
    assert json.loads(path.read_text())["state"] == "starting"
