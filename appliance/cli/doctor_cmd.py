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
        "upstream": upstream(device),
    }


def upstream(device: Device, timeout_s: float = 3.0) -> dict[str, Any]:
    """The routing table, and each endpoint probed now (GET /models with its key): reachable and what it serves,
    or why not. The running appliance's breaker states are in its /health."""
    import httpx

    table = device.routes.snapshot()
    for name, endpoint in device.routes.endpoints.items():
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        try:
            reply = httpx.get(f"{endpoint.base_url.rstrip('/')}/models", headers=headers, timeout=timeout_s)
            if reply.status_code in (401, 403):
                probe = f"reachable, refuses the key (HTTP {reply.status_code})"
            else:
                reply.raise_for_status()
                served = [m.get("id") for m in reply.json().get("data", []) if isinstance(m, dict)]
                probe = f"reachable, serves {', '.join(map(str, served)) or 'nothing'}"
        except httpx.HTTPStatusError as exc:
            probe = f"reachable, answers HTTP {exc.response.status_code}"
        except httpx.TimeoutException:
            probe = f"unreachable: no answer within {timeout_s:g} s"
        except httpx.TransportError as exc:
            probe = f"unreachable: {exc.__class__.__name__}: {str(exc)[:80]}"
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            probe = f"unusable answer: {type(exc).__name__}"
        table["endpoints"][name]["probe"] = probe
    return table


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
    _render_upstream(console, report["upstream"])


def _render_upstream(console: Console, table_: dict[str, Any]) -> None:
    if not table_["endpoints"]:
        console.print("upstream tier: none (everything runs on this device)")
        return
    table = Table(title="Upstream endpoints")
    for col in ("endpoint", "base URL", "model", "timeout", "now"):
        table.add_column(col)
    for name, e in table_["endpoints"].items():
        colour = "green" if e["probe"].startswith("reachable") else "red"
        table.add_row(name, e["base_url"], e["model"], f"{e['timeout_s']:g} s", f"[{colour}]{e['probe']}[/]")
    console.print(table)
    table = Table(title="Upstream routes (tried in order; then the local path)")
    for col in ("task", "endpoint", "when", "budget", "pairs"):
        table.add_column(col)
    for task, routes in table_["routes"].items():
        for r in routes:
            when = r["when"] + (f" < {r['min_confidence']:g}" if "min_confidence" in r else "")
            budget = f"{r['budget_s']:g} s" if r["budget_s"] else "endpoint timeout"
            table.add_row(task, r["endpoint"], when, budget, ", ".join(r["pairs"]) or "any")
    console.print(table)
