"""`appliance doctor`: the hardware report, the matched profile and why, the runtime chosen per model with
every rejected candidate and its reason, and the store's state."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from appliance.cli.state import CliState
from appliance.device import Device
from appliance.errors import ApplianceError


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout."),
) -> None:
    """Check this device: hardware, profile, runtimes per model, model store."""
    state: CliState = ctx.obj
    device = state.device
    report = collect(device)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render(report)
    if any(m["runtime"] is None for m in report["models"]):
        raise typer.Exit(1)


def collect(device: Device) -> dict[str, Any]:
    models = []
    for model_id in device.default_models:
        entry: dict[str, Any] = {"model": model_id, "runtime": None, "attempts": [],
                                 "store": store_state(device, model_id)}
        try:
            selection = device.select(model_id)
            entry.update(selection.to_dict())
            selection.close()
        except ApplianceError as exc:
            entry["error"] = str(exc)
        models.append(entry)
    profile = device.match.profile
    return {
        "hardware": device.report.model_dump(),
        "profile": {"name": profile.name, "description": profile.description, "why": device.match.reasons,
                    "rejected": device.match.rejected, "threads": device.threads,
                    "memory_budget_mb": device.pool.budget_bytes >> 20},
        "runtimes": {name: _version(b) for name, b in device.backends.items()},
        "models": models,
        "store": {"path": str(device.store.root)},
    }


def store_state(device: Device, model_id: str) -> str:
    active = device.store.active_digest(model_id)
    if active is None:
        return "not provisioned"
    return "active" if active == device.catalog.get(model_id).digest() else "outdated (pull again)"


def _version(backend: Any) -> str:
    try:
        return str(backend.version())
    except ApplianceError as exc:
        return f"unavailable: {exc}"
    except Exception as exc:  # a runtime that cannot even report its version is itself a finding
        return f"unavailable: {exc}"


def _mark(attempt: dict[str, Any]) -> str:
    if not attempt["tried"]:
        return "[dim]·[/]"
    return "[green]✓[/]" if attempt["passed"] else "[red]✗[/]"


def render(report: dict[str, Any]) -> None:
    console = Console()
    hw = report["hardware"]
    cpu, mem, board = hw["cpu"], hw["memory"], hw["board"]
    table = Table(title="Hardware", show_header=False)
    table.add_row("system", f"{hw['system']} {hw.get('kernel') or ''}")
    table.add_row("board", board.get("model") or "-")
    table.add_row("cpu", f"{cpu['arch']} · {cpu.get('model_name') or '?'} · {cpu['cores']} cores")
    interesting = [f for f in cpu["flags"] if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile",
                                                       "neon", "sve", "sve2", "rvv", "v", "f16c", "fma")]
    table.add_row("isa features", " ".join(interesting) or "-")
    table.add_row("memory", f"{mem['total_mb']} MiB ({mem['available_mb']} MiB available)")
    accels = [f"{a['name']} [{a['kind']}]" for a in hw["accelerators"]]
    table.add_row("accelerators", "\n".join(accels) or "none")
    console.print(table)

    prof = report["profile"]
    table = Table(title=f"Profile: {prof['name']}", show_header=False)
    table.add_row("matched because", ", ".join(prof["why"]))
    table.add_row("threads / budget", f"{prof['threads']} threads, {prof['memory_budget_mb']} MiB for models")
    table.add_row("others", "\n".join(f"{n}: {r}" for n, r in prof["rejected"].items()) or "-")
    console.print(table)

    table = Table(title="Runtimes per model")
    for col in ("model", "store", "chosen", "candidates"):
        table.add_column(col)
    for m in report["models"]:
        chosen = m["runtime"] or "[red]none[/]"
        tried = [f"{_mark(a)} {a['candidate']}: {a['reason']}" for a in m["attempts"]]
        table.add_row(m["model"], m["store"], chosen, "\n".join(tried) or f"[red]{m.get('error', '')}[/]")
    console.print(table)

    table = Table(title="Runtime libraries", show_header=False)
    for name, version in report["runtimes"].items():
        table.add_row(name, version)
    console.print(table)
    console.print(f"model store: {report['store']['path']}")
