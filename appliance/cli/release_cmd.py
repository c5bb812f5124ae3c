"""`appliance release …`: make signing keys, create and fill the signed update repository, publish, rotate root.

Keys are passphrase-encrypted files in ``--keys`` directories (never inside the repository); a command unlocks
only the keys of the roles it signs, asking for each passphrase unless ``APPLIANCE_KEY_PASSPHRASE[_<NAME>]`` is
set. The work is `appliance.release` (imported when a command runs).
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from appliance.release.publish import Release
    from appliance.release.repository import FileRepository

app = typer.Typer(help="The signed update repository (TUF): keys, models, config, firmware, publishing.",
                  no_args_is_help=True)
REPO = typer.Argument(..., metavar="REPO", help="The repository directory (served as static files).")
KEYS = typer.Option(..., "--keys", "-k", metavar="DIR", help="Directory of key files (repeatable).")
VERSION = typer.Option(None, "--version", min=1, help="Version number (default: one above the newest).")
TAGS = typer.Option(None, "--tag", help="Only devices with this profile name or tag (repeatable; default: all).")
MIN = typer.Option("0", "--min-appliance", help="Lowest appliance version that may install it.")
console = Console(stderr=True, highlight=False)


def _ask(prompt: str) -> str:
    return str(typer.prompt(prompt, hide_input=True))


def _open(repo: Path, keys_dirs: list[Path]) -> FileRepository:
    from appliance.release.keys import discover, unlock
    from appliance.release.repository import FileRepository

    found = discover(keys_dirs)
    return FileRepository(repo, unlock=lambda keyid: unlock(found[keyid], _ask) if keyid in found else None)


def _release(version: int | None, tags: list[str] | None, min_appliance: str,
             languages: list[str] | None = None) -> Release:
    from appliance.release.publish import Release

    return Release(version, list(tags or []), min_appliance, list(languages or []))


@app.command()
def keygen(name: str = typer.Argument(..., help="Key name, e.g. root-1, targets, timestamp, models."),
           keys: Path = typer.Option(..., "--keys", "-k", metavar="DIR", help="Where to write the key files."),
           repo: Path | None = typer.Option(None, "--repo", help="Refuse to write inside this repository.")) -> None:
    """A new Ed25519 signing key, encrypted with a passphrase (asked twice unless set in the environment)."""
    import os

    from appliance.release.keys import generate

    variable = f"APPLIANCE_KEY_PASSPHRASE_{name.upper().replace('-', '_')}"
    passphrase = os.environ.get(variable) or os.environ.get("APPLIANCE_KEY_PASSPHRASE") or \
        str(typer.prompt(f"passphrase for key {name}", hide_input=True, confirmation_prompt=True))
    made = generate(keys, name, passphrase, repo)
    typer.echo(f"{made.keyid}  {made.private}")


@app.command()
def init(repo: Path = REPO, keys: list[Path] = KEYS,
         root: list[str] = typer.Option(..., "--root", help="A root key's name (repeatable)."),
         threshold: int = typer.Option(1, "--threshold", min=1, help="Root signatures required."),
         targets: str = typer.Option("targets", help="Key name of the targets role."),
         snapshot: str = typer.Option("snapshot", help="Key name of the snapshot role."),
         timestamp: str = typer.Option("timestamp", help="Key name of the timestamp role."),
         models: str = typer.Option("models", help="Key name of the delegated models role."),
         config: str = typer.Option("config", help="Key name of the delegated config role."),
         firmware: str = typer.Option("firmware", help="Key name of the delegated firmware role.")) -> None:
    """Create the repository: root (offline keys, threshold), targets delegating models, config, firmware."""
    from appliance.release.repository import create

    roles = {"targets": targets, "snapshot": snapshot, "timestamp": timestamp, "models": models,
             "config": config, "firmware": firmware}
    named = _named(keys, [*root, *roles.values()])
    create(_open(repo, keys), [named[n].key for n in root], threshold, {r: named[n].key for r, n in roles.items()})
    typer.echo(f"repository created in {repo}; devices trust {repo / 'metadata' / '1.root.json'} (fleet.root)")


def _named(keys_dirs: list[Path], names: list[str]) -> dict:
    from appliance.release.keys import SigningKeyError, keyfile

    found = {}
    for name in names:
        for folder in keys_dirs:
            candidate = keyfile(folder, name)
            if candidate.public.exists():
                found[name] = candidate
                break
        else:
            raise SigningKeyError(f"no key named {name} in {', '.join(map(str, keys_dirs))}; "
                                  f"fix: appliance release keygen {name} --keys DIR")
    return found


@app.command("add-model")
def add_model(ctx: typer.Context, repo: Path = REPO, keys: list[Path] = KEYS,
              tree: Path | None = typer.Argument(None, help="A model version tree (manifest.json + variant/file)."),
              from_store: str | None = typer.Option(None, "--from-store", metavar="ID",
                                                    help="Publish the active version of this model in the store."),
              version: int | None = VERSION, tag: list[str] | None = TAGS, min_appliance: str = MIN,
              language: list[str] | None = typer.Option(None, "--language", help="A language it serves.")) -> None:
    """Add a model version (files stored once by hash; a delta from the previous version where it pays)."""
    from appliance.release.publish import add_model as add

    if (tree is None) == (from_store is None):
        raise typer.BadParameter("give a TREE or --from-store ID")
    if from_store is not None:
        from appliance.models import ModelStore, default_store_path

        settings = ctx.obj.settings
        found = ModelStore(settings.models.store or default_store_path()).active_tree(from_store)
        if found is None:
            raise typer.BadParameter(f"model {from_store} is not in the store (appliance models pull {from_store})")
        tree = found
    assert tree is not None
    typer.echo(add(_open(repo, keys), tree, _release(version, tag, min_appliance, language)))


@app.command("add-config")
def add_config(repo: Path = REPO, name: str = typer.Argument(..., help="Bundle name devices follow (fleet.config)."),
               toml: Path = typer.Argument(..., help="A settings TOML (checked against the settings schema)."),
               keys: list[Path] = KEYS, version: int | None = VERSION, tag: list[str] | None = TAGS,
               min_appliance: str = MIN) -> None:
    """Add a configuration bundle version."""
    from appliance.release.publish import add_config as add

    typer.echo(add(_open(repo, keys), name, toml, _release(version, tag, min_appliance)))


@app.command("add-firmware")
def add_firmware(repo: Path = REPO, board: str = typer.Argument(..., help="Board name devices follow (fleet.board)."),
                 image: Path = typer.Argument(..., help="Root filesystem image for the inactive slot."),
                 keys: list[Path] = KEYS, version: int | None = VERSION, tag: list[str] | None = TAGS,
                 min_appliance: str = MIN) -> None:
    """Add a firmware image version."""
    from appliance.release.publish import add_firmware as add

    typer.echo(add(_open(repo, keys), board, image, _release(version, tag, min_appliance)))


@app.command()
def publish(repo: Path = REPO, keys: list[Path] = KEYS) -> None:
    """Sign a new snapshot and timestamp: what was added reaches devices (run it from a timer too: the timestamp
    expires after a day)."""
    from appliance.release.publish import publish as do

    snapshot, timestamp = do(_open(repo, keys))
    typer.echo(f"published: snapshot v{snapshot}, timestamp v{timestamp}")


@app.command("rotate-root")
def rotate_root(repo: Path = REPO, keys: list[Path] = KEYS,
                add: list[str] | None = typer.Option(None, "--add", help="Root key name to add (repeatable)."),
                remove: list[str] | None = typer.Option(None, "--remove", help="Root key name to remove."),
                threshold: int | None = typer.Option(None, "--threshold", min=1, help="New root threshold.")) -> None:
    """A new root version signed by the old and the new root keys (devices follow the chain)."""
    from appliance.release.repository import rotate_root as rotate

    named = _named(keys, [*(add or []), *(remove or [])])
    version = rotate(_open(repo, keys), [named[n].key for n in add or []], [named[n].keyid for n in remove or []],
                     threshold)
    typer.echo(f"root v{version} written; run `appliance release publish` next")


@app.command()
def status(repo: Path = REPO) -> None:
    """Each role's version and expiry, and what the delegated roles hold."""
    from datetime import datetime

    from appliance.release.repository import FileRepository

    found = FileRepository(repo)
    versions = found.versions()
    if not versions:
        raise typer.BadParameter(f"{repo} holds no repository (appliance release init)")
    table = Table("role", "version", "expires", "targets")
    now = datetime.now(UTC)
    for role, (version, expires) in versions.items():
        left = expires - now
        when = f"{expires:%Y-%m-%d %H:%M} UTC" + (" [bold red](expired)[/]" if left.total_seconds() < 0 else "")
        held = len(found.targets(role).targets) if role not in ("root", "snapshot", "timestamp") else ""
        table.add_row(role, str(version), when, str(held))
    Console().print(table)
