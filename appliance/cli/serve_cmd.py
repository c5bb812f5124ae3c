"""`appliance keys …`: the HTTP API's keys, and the first key `appliance run` makes when there is none."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from appliance.api.keys import KeyStore
from appliance.config import Settings
from appliance.config.paths import data_root

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)
console = Console()


def key_store(settings: Settings) -> KeyStore:
    path = settings.api.keys_file
    if path is None:
        path = data_root() / "api-keys.json"
    return KeyStore(path)


def first_key(keys: KeyStore) -> None:
    """Create and print a first API key when there is none (shown once; only its hash is stored) — on a terminal
    only: under systemd stdout goes to the journal, where a secret must not be written."""
    if keys.list():
        return
    if not sys.stdout.isatty():
        console.print(f"no API key yet: create one with `appliance keys create NAME` (stored hashed in {keys.path})")
        return
    _, token = keys.create("first key")
    console.print(f"[bold]first API key[/] (shown once, stored hashed in {keys.path}):\n{token}")


@keys_app.command("create")
def create(ctx: typer.Context, name: str = typer.Argument(..., help="Who or what the key is for.")) -> None:
    """Create a key and print it once; only its hash is kept."""
    print_new_key(key_store(ctx.obj.settings), name)


def print_new_key(keys: KeyStore, name: str) -> None:
    key, token = keys.create(name)
    console.print(f"key {key.id} ({name}):")
    typer.echo(token)


@keys_app.command("link")
def link(ctx: typer.Context, name: str = typer.Argument(..., help="The name of the key the link becomes."),
         ttl: float = typer.Option(120.0, "--ttl", min=1, help="Seconds the link is valid (it works once)."),
         host: str = typer.Option("127.0.0.1", "--host", help="The host in the printed URL."),
         path: str = typer.Option("/kiosk", "--next", help="The kiosk page (with a preset query) to land on.")
         ) -> None:
    """Print a one-time sign-in link to the kiosk page: opened once within --ttl seconds, it gives that browser a
    new key called NAME (replacing the earlier keys of that name). The device's own kiosk screen uses it."""
    from urllib.parse import urlencode

    code = key_store(ctx.obj.settings).create_link(name, ttl)
    port = ctx.obj.settings.api.port
    typer.echo(f"http://{host}:{port}/kiosk/login?{urlencode({'code': code, 'next': path})}")


@keys_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Every key: id, name, created, revoked (never the key itself)."""
    print_keys(key_store(ctx.obj.settings))


def print_keys(keys: KeyStore) -> None:
    import datetime

    table = Table()
    for col in ("id", "name", "created", "state"):
        table.add_column(col)
    for key in keys.list():
        created = datetime.datetime.fromtimestamp(key.created).isoformat(timespec="seconds")
        table.add_row(key.id, key.name, created, "[red]revoked[/]" if key.revoked else "active")
    console.print(table)


@keys_app.command("revoke")
def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id (see keys list).")) -> None:
    """Revoke a key: requests with it get 403 from now on."""
    print_revoked(key_store(ctx.obj.settings), key_id)


def print_revoked(keys: KeyStore, key_id: str) -> None:
    key = keys.revoke(key_id)
    console.print(f"revoked {key.id} ({key.name})")
