"""`appliance sip …` and `appliance call`: the phone on its own, its status, flow checks, outbound calls."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from appliance.calls import CallAppFactory
from appliance.cli.state import CliState
from appliance.errors import ApplianceError
from appliance.sessions import Mode, SessionSpec

app = typer.Typer(help="SIP telephony: the phone service, its status, call flows.", no_args_is_help=True)
console = Console()


@app.command("status")
def status(
    ctx: typer.Context,
    url: str | None = typer.Option(None, help="The running service's API (default http://127.0.0.1:<api.port>)."),
    key: str | None = typer.Option(None, help="API key (default $APPLIANCE_API_KEY)."),
) -> None:
    """Calls in progress, registrations and counters of the running `appliance serve`."""
    settings = ctx.obj.settings
    url = url or f"http://127.0.0.1:{settings.api.port}"
    key = key or os.environ.get("APPLIANCE_API_KEY")
    if not key:
        raise ApplianceError("an API key is needed: --key KEY or APPLIANCE_API_KEY (create one: appliance keys "
                             "create NAME)")
    try:
        response = httpx.get(f"{url}/v1/sip/status", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except httpx.HTTPError as exc:
        raise ApplianceError(f"cannot reach the service at {url}: {exc} (is `appliance serve` running?)") from None
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", response.text) if response.content else ""
        raise ApplianceError(f"{url} answered {response.status_code}: {message}")
    data = response.json()
    console.print(f"SIP listening on [bold]{data['listen']}[/]; {len(data['calls'])} of {data['max_calls']} calls; "
                  f"answered {data['answered']}, turned away busy {data['rejected_busy']}, "
                  f"cancelled {data['cancelled']}; ended: {data['ended'] or 'none yet'}")
    if data["calls"]:
        table = Table("call", "caller", "dialled", "seconds", "codec")
        for call in data["calls"]:
            table.add_row(call["call_id"], call["caller"], call["called"], str(call["seconds"]), str(call["codec"]))
        console.print(table)
    if data["accounts"]:
        table = Table("account", "address", "registered", "expires in s", "last status", "last error")
        for account in data["accounts"]:
            table.add_row(account["name"], account["aor"], "yes" if account["registered"] else "[red]no[/]",
                          str(account["expires_in_s"] or "-"), str(account["last_status"] or "-"),
                          account["last_error"] or "")
        console.print(table)


@app.command("check")
def check(ctx: typer.Context,
          flow: Path | None = typer.Argument(None, help="Flow YAML (default: the configured ones).")) -> None:
    """Check a call flow (and the configured routes) and list its steps: errors name the file and line."""
    from appliance.bot.flow import EXAMPLE_FLOW, load_flow

    settings = ctx.obj.settings
    paths = [flow] if flow else [settings.bot.flow or EXAMPLE_FLOW, *settings.bot.routes.values()]
    for path in paths:
        loaded = load_flow(path, settings.bot.variables if not flow else None)
        console.print(f"[green]ok[/] {path}: flow [bold]{loaded.name}[/] ({loaded.language}), "
                      f"{len(loaded.steps)} steps: {', '.join(loaded.steps)}")


def call(
    ctx: typer.Context,
    uri: str = typer.Argument(..., help="Who to call, e.g. sip:200@pbx.example.com"),
    say: str | None = typer.Option(None, help="Say this text, then hang up."),
    mode: Mode | None = typer.Option(None, help="Run a session mode (echo, interpret, transcribe) on the call."),
    flow: Path | None = typer.Option(None, help="Run this flow (default: the configured one)."),
    language: str = typer.Option("en", help="Language spoken (--say, --mode)."),
    target: str | None = typer.Option(None, help="interpret: the language to speak."),
    account: str | None = typer.Option(None, help="Configured SIP account whose credentials answer challenges."),
    seconds: float = typer.Option(300, help="Hang up after this long."),
) -> None:
    """Place an outbound call and run the bot on it; prints how it ended."""
    from appliance.bot.callbot import flow_app_factory
    from appliance.bot.calls import announcement_factory, mode_app_factory
    from appliance.bot.flow import EXAMPLE_FLOW, load_flow
    from appliance.bot.records import CallStore
    from appliance.bot.routing import records_root
    from appliance.sip.phone import Phone
    from appliance.sip.service import account_credentials, phone_options

    state: CliState = ctx.obj
    settings = state.settings
    stack = state.device.voice_stack()
    factory: CallAppFactory
    if say:
        factory = announcement_factory(stack, say, language)
    elif mode:
        factory = mode_app_factory(stack, SessionSpec(mode=mode, language=language, target=target))
    else:
        loaded = load_flow(flow or settings.bot.flow or EXAMPLE_FLOW, settings.bot.variables if not flow else None)
        store = CallStore(records_root(settings.bot), settings.bot.retention_days, settings.bot.max_records)
        factory = flow_app_factory(stack, loaded, store, record_audio=settings.bot.record_audio)
    user, digest = account_credentials(settings.sip, account) if account else ("appliance", None)

    async def run() -> str:
        phone = Phone(dataclasses.replace(phone_options(settings.sip), port=0), lambda info: None)
        await phone.start()
        try:
            console.print(f"calling {uri} …")
            placed = await phone.call(uri, factory, user=user, digest=digest)
            console.print(f"answered ({placed.negotiated.codec if placed.negotiated else '?'})")
            try:
                return await asyncio.wait_for(asyncio.shield(placed.ended), seconds)
            except TimeoutError:
                await placed.hangup("time limit")
                return "time limit"
        finally:
            await phone.stop()
            await stack.stop()

    console.print(f"call ended: {asyncio.run(run())}")
