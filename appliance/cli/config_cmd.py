"""`appliance config …`: inspect the effective configuration."""

from __future__ import annotations

import typer

from appliance.cli.state import CliState
from appliance.config import render_settings

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML, secrets masked."""
    state: CliState = ctx.obj
    typer.echo(render_settings(state.settings), nl=False)
