"""`appliance kiosk`: the kiosk session on this machine's microphone and speaker, captions in the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from appliance.cli.state import CliState
from appliance.sessions import SessionSpec

out = Console()


def kiosk(
    ctx: typer.Context,
    list_devices: bool = typer.Option(False, "--list-devices", help="List sound devices and exit."),
    input_name: str | None = typer.Option(None, "--input", help="Microphone: part of its name (default: system's)."),
    output_name: str | None = typer.Option(None, "--output", help="Speaker: part of its name (default: system's)."),
    mode: str = typer.Option("interpret", help="interpret, echo (assistant) or transcribe (captions only)."),
    language: str = typer.Option("en", help="The language spoken to the device."),
    target: str | None = typer.Option(None, help="interpret: the language to speak."),
    seconds: float = typer.Option(0, min=0, help="Stop after this long (0: until Ctrl-C)."),
) -> None:
    """Run the kiosk on the device's own microphone and speaker."""
    from appliance.kiosk.sound import SoundSystem

    sound = SoundSystem()
    try:
        if list_devices:
            _print_devices(sound)
            return
        mic, speaker = sound.find(input_name, "input"), sound.find(output_name, "output")
        spec = SessionSpec.model_validate({"mode": mode, "language": language, "target": target})
        state: CliState = ctx.obj
        stack = state.device.voice_stack()
        asyncio.run(_run(stack, spec, sound, mic, speaker, seconds))
    finally:
        sound.close()


async def _run(stack: Any, spec: SessionSpec, sound: Any, mic: Any, speaker: Any, seconds: float) -> None:
    from appliance.kiosk.local import run_local

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds:
        loop.call_later(seconds, stop.set)
    try:
        await run_local(stack, spec, sound, mic, speaker, _show, stop)
    finally:
        with contextlib.suppress(Exception):
            await stack.stop()


def _show(event: dict[str, Any]) -> None:
    kind = event["type"]
    if kind == "ready":
        out.print(f"[bold]{event['mode']}[/] — listening on {event['input']} ({event['input_rate']} Hz), "
                  f"speaking on {event['output']} ({event['output_rate']} Hz); Ctrl-C to stop", highlight=False)
    elif kind == "caption" and event["final"]:
        line = event["source"] if not event["target"] else f"{event['source']}  →  [bold]{event['target']}[/]"
        out.print(line, highlight=False)
    elif kind == "state":
        out.print(f"[dim]({event['state']})[/]")


def _print_devices(sound: Any) -> None:
    devices = sound.devices()
    if not devices:
        from appliance.kiosk.sound import SoundError

        raise SoundError("no sound devices found (no sound card, or no access to /dev/snd); the kiosk page in a "
                         "browser still works: appliance serve, then open /kiosk")
    table = Table(title="Sound devices (choose with --input / --output and part of the name)")
    for col in ("#", "name", "inputs", "outputs", "default rate"):
        table.add_column(col)
    for d in devices:
        table.add_row(str(d.index), d.name, str(d.inputs), str(d.outputs), str(d.default_rate))
    out.print(table)
