"""The `appliance` command: global options, sub-command groups, and errors shown without tracebacks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from appliance.cli import (
    agent_cmd,
    bench_cmd,
    config_cmd,
    console_cmd,
    doctor_cmd,
    firmware_cmd,
    image_cmd,
    kiosk_cmd,
    models_cmd,
    release_cmd,
    run_cmd,
    sbom_cmd,
    serve_cmd,
    sip_cmd,
    status_cmd,
    upstream_cmd,
    voice_cmd,
)
from appliance.cli.state import CliState
from appliance.errors import ApplianceError

app = typer.Typer(
    name="appliance",
    help="Edge voice appliance: hardware-aware, offline voice services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(models_cmd.app, name="models")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(serve_cmd.keys_app, name="keys")
app.add_typer(sip_cmd.app, name="sip")
app.add_typer(release_cmd.app, name="release")
app.add_typer(agent_cmd.app, name="agent")
app.add_typer(firmware_cmd.app, name="firmware")
app.add_typer(image_cmd.app, name="image")
app.add_typer(console_cmd.app, name="console")
app.add_typer(upstream_cmd.app, name="upstream")
app.command("run")(run_cmd.run_command)
app.command("status")(status_cmd.status)
app.command("serve")(run_cmd.serve)
app.command("wyoming")(run_cmd.wyoming)
sip_cmd.app.command("serve")(run_cmd.sip_serve)
app.command("doctor")(doctor_cmd.doctor)
app.command("transcribe")(voice_cmd.transcribe)
app.command("speak")(voice_cmd.speak)
app.command("interpret")(voice_cmd.interpret)
app.command("kiosk")(kiosk_cmd.kiosk)
app.command("call")(sip_cmd.call)
app.command("sbom")(sbom_cmd.sbom)


@app.callback()
def _options(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default /etc/appliance/appliance.toml, or $APPLIANCE_CONFIG)."
    ),
) -> None:
    ctx.obj = CliState(config)


def main() -> None:
    try:
        app()
    except ApplianceError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)  # one line
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


logging.getLogger("appliance").addHandler(logging.NullHandler())
