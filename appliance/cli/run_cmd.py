"""`appliance run` (what `make run` and the systemd unit start), and the older ways in that are now the same
runner over fewer services: `appliance serve` (API and, when enabled, SIP), `appliance sip serve`,
`appliance wyoming`."""

from __future__ import annotations

import asyncio
import os

import typer

from appliance.cli.state import CliState
from appliance.services.plan import API, SERVICES, SIP, WYOMING, plan


def start(ctx: typer.Context, only: list[str] | None = None) -> None:
    """Run the appliance (``only`` these services) in this process until SIGTERM; exit with its code."""
    from appliance.cli.serve_cmd import first_key, key_store
    from appliance.config.paths import data_root
    from appliance.services.runner import exit_now, run

    state: CliState = ctx.obj
    keys = key_store(state.settings)
    if only is None or API in only:
        first_key(keys)
    code = asyncio.run(run(state.config_path, data_root(), keys=keys, only=only))
    exit_now(code)
    raise typer.Exit(code)


def run_command(
    ctx: typer.Context,
    only: str | None = typer.Option(None, "--only", metavar="NAMES",
                                    help=f"Run only these services, comma-separated ({', '.join(SERVICES)}), "
                                    "whatever the settings enable."),
) -> None:
    """Run every enabled service (API with kiosk and WebRTC, SIP, Wyoming) under the supervisor until SIGTERM;
    SIGHUP reloads the configuration. What `make run` and the systemd unit start."""
    names = None if only is None else [n.strip() for n in only.split(",") if n.strip()]
    if names is not None:
        state: CliState = ctx.obj
        plan(state.settings, names)  # an unknown name, or none: one clear error before anything starts
    start(ctx, names)


def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Listen address (default: api.host)."),
    port: int | None = typer.Option(None, help="Port (default: api.port)."),
) -> None:
    """`appliance run --only api,sip` (sip when sip.enabled): the HTTP API and the phone."""
    if host is not None:
        os.environ["APPLIANCE_API__HOST"] = host  # the environment wins over the file, at start and at reload
    if port is not None:
        os.environ["APPLIANCE_API__PORT"] = str(port)
    state: CliState = ctx.obj
    start(ctx, [API, SIP] if state.settings.sip.enabled else [API])


def sip_serve(ctx: typer.Context) -> None:
    """`appliance run --only sip`: answer calls with the configured flows (no HTTP API) until SIGTERM."""
    start(ctx, [SIP])


def wyoming(ctx: typer.Context) -> None:
    """`appliance run --only wyoming`: the Wyoming speech-to-text and text-to-speech servers until SIGTERM."""
    start(ctx, [WYOMING])
