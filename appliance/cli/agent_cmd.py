"""`appliance agent …`: the update agent outside `appliance run` (which runs it as a service when
``fleet.repository`` is set): one poll now, a polling loop, or what the agent last recorded; enrolment at the
fleet console and a signed inventory report to it."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from appliance.cli.state import CliState

if TYPE_CHECKING:
    from appliance.fleet.agent import Agent

app = typer.Typer(help="The update agent: signed models, configuration and firmware from the fleet's repository.",
                  no_args_is_help=True)


def _agent(state: CliState, stop: threading.Event | None = None) -> Agent:
    from appliance.fleet.wiring import open_agent
    from appliance.services.agent import standalone_hooks

    device = state.device
    return open_agent(state.settings, device.store, standalone_hooks(device), device.match.profile.name, stop)


@app.command()
def poll(ctx: typer.Context) -> None:
    """Check the repository once and install what is meant for this device (exit 1 if the check failed)."""
    status = _agent(ctx.obj).poll_once()
    _print(status.__dict__)
    if status.last_error:
        raise typer.Exit(1)


@app.command()
def run(ctx: typer.Context) -> None:
    """Poll every fleet.interval_s (with jitter and backoff) until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _agent(ctx.obj, stop).run(stop)


def _console(ctx: typer.Context, url: str | None) -> tuple[str, Path]:
    from appliance.fleet.enrolment import enrolled
    from appliance.fleet.wiring import state_dir

    fleet_state = state_dir(ctx.obj.settings)
    url = url or ctx.obj.settings.fleet.console or (enrolled(fleet_state) or {}).get("url")
    if not url:
        raise typer.BadParameter("no console: give its URL or set fleet.console")
    return str(url), fleet_state


@app.command()
def enrol(ctx: typer.Context, url: str = typer.Argument(None, help="The console's base URL (default: fleet.console)."),
          token: str = typer.Option(None, help="The enrolment token (default: the one first boot adopted).")) -> None:
    """Enrol this device at the fleet console with a one-time token; the console's certificate is kept."""
    import httpx

    from appliance.config.paths import data_root
    from appliance.fleet.enrolment import enrol as do
    from appliance.fleet.identity import load_or_make

    url, fleet_state = _console(ctx, url)
    with httpx.Client(timeout=ctx.obj.settings.fleet.timeout_s) as client:
        answer = do(url, load_or_make(data_root()), fleet_state, client, token)
    typer.echo(f"enrolled at {url} as device {answer['device_id']}")


@app.command()
def report(ctx: typer.Context) -> None:
    """Send this device's inventory (profile, version, installed targets, agent state) to the console."""
    from dataclasses import asdict

    import httpx

    from appliance.config.paths import data_root
    from appliance.fleet.enrolment import report as do
    from appliance.fleet.identity import load_or_make
    from appliance.fleet.state import AgentState
    from appliance.services.agent import inventory_facts

    url, fleet_state = _console(ctx, None)
    agent_state = AgentState(fleet_state)
    inventory = {**inventory_facts(ctx.obj.device, None, 0),  # the running appliance's health is not known here
                 "installed": agent_state.installed(), "refused": sorted(agent_state.refused()),
                 "agent": asdict(agent_state.status())}
    with httpx.Client(timeout=ctx.obj.settings.fleet.timeout_s) as client:
        do(url, load_or_make(data_root()), inventory, client)
    typer.echo(f"reported to {url}")


@app.command()
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """What is installed, what is pending, the last check and the last error."""
    from appliance.fleet.state import AgentState
    from appliance.fleet.wiring import state_dir

    agent_state = AgentState(state_dir(ctx.obj.settings))
    job = agent_state.job()
    data = {**agent_state.status().__dict__, "installed": agent_state.installed(), "refused": agent_state.refused(),
            "in_progress": job.__dict__ if job else None}
    if as_json:
        typer.echo(json.dumps(data, indent=1))
    else:
        _print(data)


def _print(data: dict) -> None:
    console = Console(highlight=False)
    for key, value in data.items():
        if key.startswith("last_") and isinstance(value, float) and key != "last_error":
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        console.print(f"{key:12} {value if value not in (None, [], {}) else '-'}")
