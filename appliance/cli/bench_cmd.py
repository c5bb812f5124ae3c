"""`appliance bench …`: benchmarks that print a table and write JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.cli.state import CliState

app = typer.Typer(help="Benchmarks (figures as ratios against a baseline measured in the same run).",
                  no_args_is_help=True)


@app.command("voice")
def voice(
    ctx: typer.Context,
    limit: int = typer.Option(20, min=1, help="Prompts per language."),
    peer: str | None = typer.Option(None, help="Also run this peer side by side with the appliance's realtime "
                                    "WebSocket on the same prompts (pipecat; its venv: make bench-peers)."),
    peer_prompts: int = typer.Option(20, min=1, help="English prompts of the side-by-side run."),
    peer_python: Path = typer.Option(Path(".venv-pipecat/bin/python"), help="The peer venv's Python."),
    out: Path = typer.Option(Path("bench-results/voice.json"), "--json", help="Where to write the JSON."),
) -> None:
    """Voice-to-voice latency (echo bot, es→en interpretation) vs a naive baseline; WER; TTS speed; with
    --peer pipecat, the echo bot through the WebSocket against Pipecat's on the same models."""
    from appliance.bench.voice import run

    if peer not in (None, "pipecat"):
        raise typer.BadParameter(f"unknown peer {peer!r} (known: pipecat)", param_hint="--peer")
    state: CliState = ctx.obj
    side_by_side = _peer_run(state, peer_prompts, peer_python) if peer else None
    stack = state.device.voice_stack()
    # two languages, two pipelines each (and the side-by-side: the WebSocket's turns and Pipecat's)
    steps = 4 * limit + (peer_prompts + 1 if peer else 0)
    results = _with_progress("turns fed in real time", steps,
                             lambda step: asyncio.run(run(stack, limit, step, side_by_side)))
    _write(out, results)
    render(results)
    Console().print(f"JSON: {out}")


def _peer_run(state: CliState, prompts: int, python: Path) -> Any:
    """The side-by-side run for `bench voice`: the peer on the models the appliance chose for English."""
    import functools

    from appliance.bench import peer
    from appliance.errors import ApplianceError

    peer.require_peer(python)
    device = state.device
    piper = next((m for m in device.catalog.models if m.kind == "piper" and "en" in m.languages
                  and device.store.is_active(m.id)), None)
    whisper = next((m for m in device.catalog.models if m.kind == "whisper" and m.languages == ["en"]
                    and device.store.is_active(m.id)), None)
    if piper is None or whisper is None:
        raise ApplianceError("the side-by-side run needs an English-only Whisper and an English Piper voice; "
                             "fix: appliance models pull")
    return functools.partial(peer.run, count=prompts, python=python,
                             whisper=device.store.resolve(whisper.id).file("ct2"),
                             piper=device.store.resolve(piper.id).file("onnx", ".onnx"))


@app.command("api")
def api(
    ctx: typer.Context,
    limit: int = typer.Option(8, min=1, help="English prompts used as requests and as WebRTC turns."),
    requests: int = typer.Option(24, min=1, help="Transcription requests per concurrency level."),
    out: Path = typer.Option(Path("bench-results/api.json"), "--json", help="Where to write the JSON."),
) -> None:
    """Transcription requests/s at 1, 4 and 8 clients; WebRTC echo latency via aiortc vs the bare voice core."""
    import platform

    from appliance.bench.api import run

    state: CliState = ctx.obj
    stack = state.device.voice_stack()
    results = _with_progress("api", 3 * requests + 2 * limit, lambda step: run(stack, limit, requests, step))
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    _write(out, results)
    table = Table(title="Transcription API (POST /v1/audio/transcriptions, Asterisk prompts)")
    for col in ("clients", "req/s", "× 1 client", "audio s/s", "p50 ms", "p95 ms", "failed"):
        table.add_column(col)
    for r in results["transcriptions"]:
        table.add_row(str(r["clients"]), str(r["req_per_s"]), str(r["throughput_vs_1_client"]),
                      str(r["audio_s_per_s"]), str(r.get("p50_ms")), str(r.get("p95_ms")), str(r["failed"]))
    Console().print(table)
    table = Table(title="Echo voice-to-voice latency: WebRTC (aiortc, loopback) vs the voice core directly")
    for col in ("path", "n", "p50 ms", "p95 ms", "missed"):
        table.add_column(col)
    for key, label in (("webrtc_echo", "WebRTC, first sound at the client"),
                       ("direct_echo", "direct, first sound of the first chunk")):
        r = results[key]
        table.add_row(label, str(r["n"]), str(r.get("p50_ms")), str(r.get("p95_ms")), str(r["missed"]))
    Console().print(table)
    if "webrtc_vs_direct_p50" in results:
        Console().print(f"WebRTC adds {results['webrtc_overhead_p50_ms']} ms at p50 "
                        f"({results['webrtc_vs_direct_p50']}× / {results['webrtc_vs_direct_p95']}× p50 / p95)")
    Console().print(f"JSON: {out}")


@app.command("sip")
def sip(
    ctx: typer.Context,
    levels: str = typer.Option("1,2,4,8", help="Concurrent callers per level, comma-separated; the first is the "
                               "baseline."),
    max_calls: int = typer.Option(8, min=1, help="The phone's capacity: callers beyond it must get 503."),
    beyond: int = typer.Option(2, min=0, help="A last level this many callers past --max-calls (0: none)."),
    turns: int = typer.Option(2, min=1, max=6, help="Prompts spoken per call."),
    memory: int = typer.Option(1000, min=0, help="Then this many plain SIPp UAC calls (rounds of 100, far past "
                               "capacity): RSS after each round (0: skip)."),
    memory_rate: float = typer.Option(20.0, min=0.1, help="INVITEs per second in the memory stage."),
    out: Path = typer.Option(Path("bench-results/sip.json"), "--json", help="Where to write the JSON."),
) -> None:
    """Concurrent SIPp calls speaking Asterisk prompts to the echo bot: turn latency per level vs one call,
    503 + Retry-After beyond capacity, CPU and event-loop lag."""
    from appliance.bench.sip import GOAL_P95_MS, SipBenchOptions, find_sipp, planned_calls, run

    find_sipp()  # before loading any model
    try:
        counts = tuple(int(n) for n in levels.split(","))
    except ValueError:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {levels!r}", param_hint="--levels") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("levels are numbers of callers, at least 1", param_hint="--levels")
    options = SipBenchOptions(levels=counts, max_calls=max_calls, beyond=beyond, turns=turns, memory=memory,
                              memory_rate=memory_rate)
    state: CliState = ctx.obj
    stack = state.device.voice_stack()
    logging.getLogger("appliance.sip").setLevel(max(logging.WARNING, logging.root.level))  # lines per call
    results = _with_progress("SIPp calls", planned_calls(options), lambda step: run(stack, options, step).to_json())
    _write(out, results)
    table = Table(title=f"SIPp calls into the phone (echo bot, capacity {max_calls}): last voiced frame in → "
                        "first answer packet out")
    for col in ("callers", "answered", "503", "failed", "turns", "p50 ms", "p95 ms", "max ms", "× 1 call p50 / p95",
                "WER", "CPU cores", "loop lag p95 ms"):
        table.add_column(col)
    for r in results["levels"]:
        lat, wer = r["latency"], f"{100 * r['wer']:.1f} %" if r["wer"] is not None else "-"
        table.add_row(str(r["concurrency"]), str(r["answered"]), str(r["turned_away"]), str(r["failed"]),
                      f"{r['turns_measured']}/{r['turns_expected']}", str(lat.get("p50_ms", "-")),
                      str(lat.get("p95_ms", "-")), str(lat.get("max_ms", "-")),
                      f"{r['p50_vs_1_call']}× / {r['p95_vs_1_call']}×", wer, str(r["cpu_cores"]),
                      str(r["loop_lag_ms"].get("p95_ms", "-")))
    Console().print(table)
    table = Table(title="Where a turn's time goes (p50 ms after the caller's last voiced frame)")
    for col in ("callers", "speech ended", "final caption", "first synthesised audio", "first packet sent",
                "Whisper passes", "ASR partials dropped"):
        table.add_column(col)
    for r in results["levels"]:
        stages = r["stages_p50_ms"]
        table.add_row(str(r["concurrency"]), *(str(stages.get(k, "-")) for k in ("speech_ended", "final_caption",
                                                                                 "audio")),
                      str(r["latency"].get("p50_ms", "-")), str(r["asr_runs"]), str(r["asr_partials_dropped"]))
    Console().print(table)
    goal = results["goal"]
    Console().print(f"p95 ≤ {GOAL_P95_MS:.0f} ms up to {goal['max_concurrency_within_p95']} concurrent calls "
                    f"(goal: {max_calls}); beyond capacity turned away with Retry-After: "
                    f"{goal['beyond_capacity_turned_away_as_expected']}")
    if results["memory"]:
        _print_memory(results["memory"])
    Console().print(f"JSON: {out}")


def _print_memory(memory: dict[str, Any]) -> None:
    from appliance.bench.sip_memory import GOAL_GROWTH

    table = Table(title=f"Memory under plain SIPp UAC calls ({memory['rate_per_s']:g}/s, {memory['call_s']:g} s "
                        f"each, capacity {memory['max_calls']}; RSS before: {memory['rss_mb_before']} MB)")
    for col in ("INVITEs", "answered", "503", "RSS peak MB", "RSS idle MB"):
        table.add_column(col)
    for r in memory["rounds"]:
        table.add_row(str(r["invites"]), str(r["answered"]), str(r["turned_away"]), str(r["rss_mb_peak"]),
                      str(r["rss_mb_idle"]))
    Console().print(table)
    if memory["growth_after_first_round"] is not None:
        Console().print(f"idle RSS after the last round vs the first: {100 * memory['growth_after_first_round']:+.1f} %"
                        f" (goal ≤ {100 * GOAL_GROWTH:.0f} %)")


@app.command("supervisor")
def supervisor(
    ctx: typer.Context,
    repeat: int = typer.Option(3, min=1, help="Boots with the configured models (and `--help` runs, the baseline)."),
    kills: int = typer.Option(2, min=1, max=4, help="kill -9 of the whole appliance per boot, each restarted as "
                              "systemd would (after the unit's RestartSec, 0.1 s)."),
    activation: bool = typer.Option(True, "--socket-activation/--no-socket-activation",
                                    help="Hold the ports and pass them to each process as appliance.socket does."),
    out: Path = typer.Option(Path("bench-results/supervisor.json"), "--json", help="Where to write the JSON."),
) -> None:
    """`appliance run` in a subprocess: boot → READY=1, → /health, → models warm; kill -9 of the appliance → READY=1
    of its restart (systemd's Restart=on-failure), → Wyoming Info, → warm; idle RSS with the configured models;
    SIGTERM → exit; against `--help` and an empty-store boot. A request and a SIP OPTIONS sent while no process
    serves show what socket activation keeps."""
    from appliance.bench.supervisor import SupervisorBenchOptions, planned_steps, run

    state: CliState = ctx.obj
    options = SupervisorBenchOptions(repeat=repeat, kills=kills, activation=activation)
    results = _with_progress("appliance run", planned_steps(options),
                             lambda step: run(state.settings, options, step).to_json())
    _write(out, results)
    s, goals, empty = results["summary"], results["goals"], results["empty_store"]

    def seconds(figure: dict[str, Any], key: str = "p50_ms") -> str:
        return f"{figure[key] / 1000:.2f} s" if key in figure else "-"

    def baseline(value: float | None) -> str | None:
        return None if value is None else f"{value:.2f} s"

    table = Table(title=f"`appliance run` under the bench ({len(results['models_active'])} models active in "
                        f"{results['store']}): p50 and worst of {repeat} boots")
    for col in ("figure", "p50", "worst", "empty store", "× --help p50", "goal", "met"):
        table.add_column(col)
    rows = [("python -m appliance --help", s["help"], None, None),
            ("boot → READY=1", s["ready"], empty and baseline(empty["ready_s"]), goals["boot_to_ready"]),
            ("boot → /health answered", s["api"], empty and baseline(empty["api_s"]), None),
            ("boot → models warm (/health)", s["warm"], empty and baseline(empty["warm_s"]), None)]
    for kill in s["serving"]:
        nth = kill["nth"]
        base = empty["kills"][nth - 1] if empty and len(empty["kills"]) >= nth else {}
        rows.append((f"kill -9 #{nth} → READY=1 of the restart (+{kill['restart_sec']:g} s RestartSec)", kill,
                     baseline(base.get("ready_s")), goals["kill_to_serving"] if nth == 1 else None))
        for key, label in (("api", "/health answered"), ("held", "a GET sent meanwhile answered"),
                           ("sip", "a SIP OPTIONS sent meanwhile answered"), ("wyoming", "Wyoming Describe → Info"),
                           ("warm", "models warm")):
            rows.append((f"  kill -9 #{nth} → {label}", kill[key], baseline(base.get(f"{key}_s")), None))
    rows.append(("SIGTERM → exit", s["stop"], empty and baseline(empty["stop_s"]), None))
    for label, figure, empty_s, goal in rows:
        table.add_row(label, seconds(figure), seconds(figure, "max_ms"), empty_s or "-",
                      f"{figure['vs_help_p50']}×" if "vs_help_p50" in figure else "-",
                      f"≤ {goal['goal_s']:g} s" if goal else "-", _met(goal))
    memory = s["memory_mib"]
    empty_rss = f"{memory['empty_store']['rss_mib']:.0f} MiB" if memory["empty_store"] else "-"
    pss = "/".join(f"{v:.0f}" for v in memory["total_pss"] if v is not None)
    table.add_row("idle RSS, the appliance process (PSS)", f"{statistics.median(memory['total_rss']):.0f} MiB ({pss})",
                  f"{max(memory['total_rss']):.0f} MiB", empty_rss, "-",
                  f"≤ {goals['idle_rss']['goal_mib']:g} MiB", _met(goals["idle_rss"]))
    Console().print(table)
    boot = results["boots"][-1]
    Console().print("last boot, MiB: " + ", ".join(f"{name} RSS {m['rss_mib']:.0f} (peak {m['rss_peak_mib']:.0f}"
                                                   + (f", PSS {m['pss_mib']:.0f})" if "pss_mib" in m else ")")
                                                   for name, m in boot["memory"].items() if name != "total"))
    sent = "; ".join(f"kill #{k['nth']}: GET {', '.join(k['held']['outcomes'])}, "
                     f"OPTIONS {', '.join(k['sip']['outcomes'])}" for k in s["serving"])
    Console().print(f"socket activation {'on' if activation else 'off'}; sent while no process served: {sent}")
    Console().print(f"exit codes {s['exit_codes']}; processes left after exit: {s['outlived'] or 'none'}, "
                    f"after a kill -9: {s['left_after_kill'] or 'none'}; watchdog pings per process of the last "
                    f"boot: {boot['watchdog_pings']}")
    Console().print(f"JSON: {out}")


def _met(goal: dict[str, Any] | None) -> str:
    return "-" if goal is None else "[green]yes[/]" if goal["met"] else "[red]no[/]"


@app.command("update")
def update(
    ctx: typer.Context,
    model: str = typer.Option("silero-vad-v6", help="An ONNX model in the store to publish and change."),
    out: Path = typer.Option(Path("bench-results/update.json"), "--json", help="Where to write the JSON."),
) -> None:
    """Signed updates: bytes and seconds for a new model, a changed one (delta vs whole file), a config, a no-op."""
    from appliance.bench.update import run

    state: CliState = ctx.obj
    device = state.device
    results = _with_progress("update", 5, lambda step: run(device.store, model, device.trial, step))
    _write(out, results)
    table = Table(title=f"Signed updates of {model} ({results['model_bytes']:,} bytes), real agent on loopback")
    for column in ("case", "seconds", "target bytes", "metadata bytes", "requests"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, case in results["cases"].items():
        table.add_row(name.replace("_", " "), f"{case['seconds']:.3f}", f"{case['target_bytes']:,}",
                      f"{case['metadata_bytes']:,}", str(case["requests"]))
    Console().print(table)
    ratio = results["delta_vs_full"]
    Console().print(f"delta vs whole file: {ratio['target_bytes_ratio']:.4f} of the bytes, "
                    f"{ratio['seconds_ratio']:.2f} of the time. JSON: {out}")


@app.command("console")
def console(
    devices: int = typer.Option(1000, min=1, help="Simulated devices, each with its own key."),
    interval: float = typer.Option(5.0, min=0.1, help="Seconds between a device's checks (assignment + report)."),
    seconds: float = typer.Option(30.0, min=1, help="How long each database is loaded."),
    postgres: str = typer.Option(None, help="A PostgreSQL URL to use (default: a server started for the run)."),
    out: Path = typer.Option(Path("bench-results/console.json"), "--json", help="Where to write the JSON."),
) -> None:
    """The fleet console under many devices polling and reporting: SQLite, then PostgreSQL, and their ratio."""
    from appliance.bench.console import run

    results = _with_progress("console", 2, lambda step: run(devices, interval, seconds, postgres, step))
    _write(out, results)
    table = Table(title=f"Fleet console: {devices} devices, a check each {interval:g} s "
                        f"({results['offered_requests_per_s']} requests/s offered)")
    for column in ("database", "requests/s", "p50 ms", "p95 ms", "errors", "console CPU"):
        table.add_column(column, justify="left" if column == "database" else "right")
    for name in ("sqlite", "postgresql", "ratios_postgresql_over_sqlite"):
        row = results.get(name)
        if row:
            table.add_row(name.replace("_", " "), str(row["requests_per_s"]), str(row["p50_ms"]),
                          str(row["p95_ms"]), str(row.get("errors", "")), str(row["console_cpu"]))
    Console().print(table)
    Console().print(f"JSON: {out}")


@app.command("upstream")
def upstream(
    ctx: typer.Context,
    model: list[str] = typer.Option(None, "--model", help="Chat models of the store (default: upstream_tier.models)."),
    prompts: int = typer.Option(12, min=1, help="Answers per model and turns per path."),
    out: Path = typer.Option(Path("bench-results/upstream.json"), "--json", help="Where to write the JSON."),
) -> None:
    """The upstream tier here: per model first-token latency and tokens/s through the gateway and straight from
    llama.cpp; a bot turn answered upstream against the device's local path; the fallback with the upstream down
    (refused, stalled, breaker open)."""
    from appliance.bench.upstream import run
    from appliance.cli.upstream_cmd import chat_models

    state: CliState = ctx.obj
    if model:
        state.settings.upstream_tier.models = list(model)
    models = chat_models(state)
    results = _with_progress("upstream", 2 * len(models) + 2, lambda step: run(models, prompts, step))
    _write(out, results)
    table = Table(title=f"Upstream chat on this machine ({prompts} streamed answers per model, 48 tokens at most)")
    for column in ("model", "path", "first token p50 ms", "p95 ms", "tokens/s"):
        table.add_column(column)
    for name, paths in results["models"].items():
        for path in ("gateway", "direct"):
            r = paths[path]
            figures = ("first_token_p50_ms", "first_token_p95_ms", "tokens_per_s")
            table.add_row(name, path, *(str(r[k]) for k in figures))
    Console().print(table)
    turn, down = results["turn"], results["fallback"]
    Console().print(f"bot turn with an llm step: upstream p50 {turn['upstream_p50_ms']} ms (answered "
                    f"{turn['answered_upstream']}/{turn['of']}), local path p50 {turn['local_p50_ms']} ms")
    Console().print(f"upstream down, budget {down['budget_ms']:g} ms: refused {down['refused_ms']} ms, stalled "
                    f"{down['stalled_ms']} ms, then breaker open {down['stalled_then_breaker_open_ms']} ms")
    Console().print(f"JSON: {out}")


@app.command("image")
def image(
    board: str = typer.Argument("generic-x86_64", help="A board of images/boards/."),
    cold: bool = typer.Option(False, "--cold", help="Also build once with an empty cache (the Debian tree from "
                              "the mirror: minutes)."),
    cache: Path = typer.Option(Path("build/image-cache"), "--cache", help="The image build's step cache."),
    out: Path = typer.Option(Path("bench-results/image.json"), "--json", help="Where to write the JSON."),
) -> None:
    """Image size (raw, mapped, bundle), build time (cached; cold with --cold), QEMU boot, A→B and rollback."""
    from appliance.bench.image import run
    from appliance.image.boards import load_board

    results = _with_progress("image", 6 if cold else 5, lambda step: run(load_board(board), cache, cold, step))
    _write(out, results)
    table = Table(title=f"Image of {board} ({results['accelerator'].upper()})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if key not in ("board", "accelerator", "ratios"):
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    for key, value in results["ratios"].items():
        table.add_row(f"ratio {key}", str(value))
    Console().print(table)
    Console().print(f"JSON: {out}")


def _with_progress(label: str, total: int, work: Callable[[Callable[[str], None]], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` with a progress bar on stderr; it calls its argument with a description once per step."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        return work(lambda name: progress.update(task, advance=1, description=name))


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


def _render_peer(side: dict[str, Any]) -> None:
    table = Table(title=f"English echo side by side with {side['peer']} ({len(side['prompts'])} prompts, same models, "
                        f"last sample within {-side['floor_db']:g} dB → first answer audio)")
    for col in ("bot", "n", "p50 ms", "p95 ms", "mean ms", "missed", "WER"):
        table.add_column(col)
    for key, label in (("appliance_websocket", "this appliance, realtime WebSocket"),
                       ("pipecat", "Pipecat, in process")):
        r = side[key]
        table.add_row(label, str(r["n"]), str(r.get("p50_ms", "-")), str(r.get("p95_ms", "-")),
                      str(r.get("mean_ms", "-")), str(r["missed"]), f"{100 * r['wer']:.1f} %")
    Console().print(table)
    Console().print(f"speed-up over {side['peer']}: {side.get('speedup_p50', '-')}× p50, "
                    f"{side.get('speedup_p95', '-')}× p95; WER of a 30 s-window decode: "
                    f"{100 * side['wer_30s_window']:.1f} %")
    Console().print("goals: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in side["goals"].items()))


def render(results: dict[str, Any]) -> None:
    table = Table(title="Voice-to-voice latency (last speech sample in → first synthesised sample out)")
    for col in ("pipeline", "mode", "n", "p50 ms", "p95 ms", "missed", "WER", "speed-up p50 / p95"):
        table.add_column(col)
    for key, label in (("echo_en", "English echo"), ("interpret_es_en", "es→en interpretation")):
        suite = results[key]
        for mode in ("streaming", "naive"):
            r = suite[mode]
            speedup = f"{suite.get('speedup_p50', '-')}× / {suite.get('speedup_p95', '-')}×" if mode == "streaming" \
                else "baseline"
            wer = f"{100 * r['wer']:.1f} %" if "wer" in r else "-"
            table.add_row(label, mode, str(r["n"]), str(r.get("p50_ms", "-")), str(r.get("p95_ms", "-")),
                          str(r["missed"]), wer, speedup)
    Console().print(table)
    kept = results["interpret_es_en"].get("translation_kept", {})
    if kept.get("kept") is not None:
        Console().print(f"es→en: the spoken translation keeps {100 * kept['kept']:.1f} % of the chrF of a text "
                        f"translation (spoken {kept['spoken_chrf']}, text with beam 5 {kept['text_beam5_chrf']}, "
                        f"{kept['n']} prompts, against the English prompts)")
    if "peer" in results:
        _render_peer(results["peer"])
    tts = results["tts"]
    table = Table(title="TTS (Piper, phrase streaming)")
    for col in ("first audio p50 ms", "first audio p95 ms", "RTF mean", "RTF max", "round-trip WER"):
        table.add_column(col)
    table.add_row(str(tts["first_audio"].get("p50_ms")), str(tts["first_audio"].get("p95_ms")), str(tts["rtf_mean"]),
                  str(tts["rtf_max"]), f"{100 * tts['round_trip_wer']:.1f} %")
    Console().print(table)
