"""`appliance image …`: build a board's A/B disk image (cached steps, a progress line per step), flash it to a
disk, and boot one in QEMU with the API and SIP forwarded to the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Device images: build one for a board, flash it, boot one in QEMU.", no_args_is_help=True)


@app.command()
def build(board: str = typer.Argument(..., help="A board of images/boards/, e.g. generic-x86_64."),
          out: Path = typer.Option(Path("dist/images"), "--out", help="Where the image, .bmap, bundle, manifest go."),
          cache: Path = typer.Option(Path("build/image-cache"), "--cache", help="Cached steps (by their inputs)."),
          package: list[str] | None = typer.Option(None, "--package", help="One more Debian package (repeatable).")
          ) -> None:
    """Build BOARD's image: Debian tree, system, partitions (no mount), GPT image, block map, update bundle."""
    from appliance.image.boards import load_board
    from appliance.image.build import build as do

    console = Console(stderr=True, highlight=False)
    built = do(load_board(board), out, cache, tuple(package or ()), lambda what: console.print(f"[bold]▸[/] {what}"))
    for path in (built.image, built.bmap, built.bundle, built.manifest):
        typer.echo(str(path))


@app.command()
def flash(image: Path = typer.Argument(..., help="An image built by `appliance image build` (its .bmap beside it)."),
          device: Path = typer.Argument(..., help="The whole disk to write, e.g. /dev/sdb or /dev/mmcblk0."),
          yes: bool = typer.Option(False, "--yes", help="Do not ask before overwriting the disk.")) -> None:
    """Write IMAGE to DEVICE with bmaptool (mapped blocks only, checksummed); refuses a mounted disk, the disk
    this system runs from, or one smaller than the image."""
    from appliance.image.flash import check_target
    from appliance.image.flash import flash as do

    name = check_target(device, image.stat().st_size)
    if not yes and not typer.confirm(f"Everything on {device} ({name}) will be overwritten. Go on?"):
        raise typer.Exit(1)
    do(image, device)
    typer.echo(f"{image.name} written to {device} and verified")


@app.command()
def boot(image: Path = typer.Argument(..., help="An image of a UEFI board (generic-x86_64, generic-arm64)."),
         api_port: int = typer.Option(8080, help="Host port forwarded to the guest's API (the kiosk page)."),
         sip_port: int = typer.Option(5060, help="Host port forwarded to the guest's SIP (UDP and TCP)."),
         memory_mib: int = typer.Option(2048, help="Guest memory.")) -> None:
    """Boot IMAGE in QEMU (KVM when APPLIANCE_QEMU_KVM=1 and it works, TCG otherwise), console on this terminal
    (Ctrl-A X quits); the kiosk page is then at http://127.0.0.1:API_PORT/kiosk."""
    from appliance.image.qemu import command, image_arch, kvm_works

    arch = image_arch(image)
    args = command(image, arch, forwards={api_port: 8080, sip_port: 5060}, udp_forwards={sip_port: 5060},
                   memory_mib=memory_mib, kvm=kvm_works(arch),
                   isolated=False)  # a person's guest may reach the network (the fleet, the upstream tier)
    Console(stderr=True, highlight=False).print(" ".join(args))
    raise typer.Exit(subprocess.call(args, env=os.environ))
