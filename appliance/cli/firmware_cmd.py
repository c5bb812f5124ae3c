"""`appliance firmware …`: the A/B root slots of this device (or of a disk image with ``--image``): which slot
runs and which boots next, installing a firmware bundle into the other slot, rolling back; and what an image
runs at boot: first-boot provisioning and the health gate that blesses a slot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

if TYPE_CHECKING:
    from appliance.image.firmware import AbSystem

app = typer.Typer(help="A/B firmware slots: status, install a bundle into the other slot, roll back.",
                  no_args_is_help=True)
FIRST_KEY = "first boot"
IMAGE = typer.Option(None, "--image", metavar="IMG", help="Work on this disk image instead of the running system.")


def _system(image: Path | None) -> AbSystem:
    from appliance.image.firmware import open_image, open_running

    return open_image(image) if image is not None else open_running()


@app.command()
def status(image: Path | None = IMAGE, as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """The booted slot, the one that boots next, and each slot's generation and state (good, trying, bad)."""
    found = _system(image).status()
    if as_json:
        typer.echo(json.dumps(found, indent=1))
        return
    console = Console(highlight=False)
    console.print(f"booted: {found['booted'] or '-'}   boots next: {found['next'] or '-'}")
    for slot, entry in found["slots"].items():
        console.print(f"  slot {slot}: generation {entry['generation']}, {entry['state']}")


@app.command()
def install(bundle: Path = typer.Argument(..., help="A firmware bundle (tar: manifest.json, root.ext4, vmlinuz, "
                                          "initrd.img)."),
            image: Path | None = IMAGE,
            tries: int = typer.Option(3, min=1, max=9, help="Boots the new slot gets before it falls back.")) -> None:
    """Write the bundle to the slot not booted; it is tried at the next boot and kept only once blessed."""
    from appliance.image.firmware import install as do

    system = _system(image)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("writing the slot", total=None)
        entry = do(system, bundle, tries, lambda n: progress.advance(task, n))
    typer.echo(f"slot {entry.slot} holds generation {entry.generation}; it is tried at the next boot "
               f"({tries} tries) and kept once the appliance is ready and healthy")


@app.command()
def rollback(image: Path | None = IMAGE) -> None:
    """Boot the other slot next (the current one is marked bad)."""
    from appliance.image.firmware import rollback as do

    entry = do(_system(image))
    typer.echo(f"slot {entry.slot} marked bad; the other slot boots next")


@app.command()
def provision(ctx: typer.Context,
              boot: Path = typer.Option(Path("/efi"), help="The boot partition, where a user may leave "
                                        "appliance/enrolment.token and appliance/authorized_keys.")) -> None:
    """First boot of an image: device key, enrolment token and SSH key from the boot partition, and the first
    API key, printed once (run by appliance-firstboot.service, whose output goes to the console only)."""
    from appliance.cli.serve_cmd import key_store
    from appliance.config.paths import data_root
    from appliance.image.provision import provision as do

    keys = key_store(ctx.obj.settings)

    def first_key() -> str:
        for old in keys.list():  # a first boot cut short made one that no one saw
            if old.name == FIRST_KEY and not old.revoked:
                keys.revoke(old.id)
        return keys.create(FIRST_KEY)[1]

    done = do(data_root(), boot if boot.is_dir() else None, first_key)
    if done is None:
        typer.echo("already provisioned")
        return
    typer.echo(f"APPLIANCE-PROVISIONED device {done.device_id}; enrolment token: "
               f"{'adopted' if done.enrolled else 'none'}; ssh: {'on' if done.ssh else 'off'}")
    typer.echo(f"API key (shown once, stored hashed): {done.api_key}")


@app.command()
def check(ctx: typer.Context,
          wait: float = typer.Option(900, help="Seconds to wait for READY and a healthy /health."),
          port: int = typer.Option(0, help="The API's port (default: api.port of the configuration).")) -> None:
    """The health gate of boot assessment: exit 0 once the appliance is READY and healthy; on a slot being
    tried, a failure marks it bad and reboots into the other slot."""
    from appliance.image import health

    why = health.wait_healthy(health.unit_state, lambda: health.probe(port or ctx.obj.settings.api.port), wait)
    if why is None:
        typer.echo("APPLIANCE-HEALTH ok")
        return
    trial = health.on_trial()
    typer.echo(f"APPLIANCE-HEALTH failed: {why}" + ("; this slot is marked bad, rebooting into the other" if trial
                                                      else ""))
    if trial:
        health.give_up()
    raise typer.Exit(1)
