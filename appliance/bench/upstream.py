"""`appliance bench upstream`: the upstream tier on this machine, each figure beside its baseline from the same run.

- **chat**, per model: first-token latency and decode speed (tokens/s) of streamed answers through the gateway
  (what a device sees), and straight from the model's llama.cpp server (the baseline: the gateway's cost);
- **turn**: a call bot's `llm` step answered upstream, against the same step answered on the device (the flow's
  local path, no upstream): what routing a step upstream adds to a turn;
- **fallback**, with the upstream down: a refused connection, a server that accepts and never answers (the
  route's budget decides), and an open circuit breaker (at once), each until the flow's fallback speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from appliance.api.keys import KeyStore
from appliance.bot.engine import FlowEngine
from appliance.bot.flow import parse_flow
from appliance.bot.routed import RoutedLlm
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.upstream.gateway import Gateway, Quota, make_app
from appliance.upstream.llama import LlamaServer, free_port

PROMPTS = ("What time does the shop open?", "Name three colours.", "Say hello to a caller.",
           "What is the capital of France?", "Give one tip for sleeping well.", "How many days are in a week?")
FLOW = """
name: bench
greeting: Hello.
start: ask
steps:
  ask:
    say: What would you like to know?
    llm: {system_prompt: "You answer questions about the Corner Shop. It opens at nine.", max_questions: 50}
    fallback: person
  person:
    say: Let me find someone for you.
    hangup: Goodbye.
"""
BUDGET_S = 1.0  # the fallback figures' route budget


def run(models: dict[str, Path], prompts: int, step: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    results: dict[str, Any] = {"prompts": prompts, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp, contextlib.ExitStack() as stack:
        backends = {}
        for name, path in models.items():
            step(f"start {name}")
            backends[name] = stack.enter_context(LlamaServer(path, Path(tmp) / f"{name}.log"))
        keys = KeyStore(Path(tmp) / "keys.json")
        _, key = keys.create("bench")
        url = stack.enter_context(_serving(Gateway(backends, keys, Quota(per_minute=100_000, tokens_per_day=10**9))))
        for name, server in backends.items():
            step(f"chat {name}")
            paths = {"direct": (server.base_url, server.key), "gateway": (url, key)}
            _chat(paths, name, 1)  # warm-up of both paths, not counted
            measured = _chat(paths, name, prompts)
            direct, gateway = measured["direct"], measured["gateway"]
            results["models"][name] = {"gateway": gateway, "direct": direct, "ratios_gateway_over_direct": {
                "first_token_p50": _ratio(gateway["first_token_p50_ms"], direct["first_token_p50_ms"]),
                "tokens_per_s": _ratio(gateway["tokens_per_s"], direct["tokens_per_s"])}}
        step("turns: upstream and local")
        first = next(iter(backends))
        results["turn"] = asyncio.run(_turns(url, key, first, prompts))
        step("fallbacks with the upstream down")
        results["fallback"] = asyncio.run(_fallbacks())
    return results


@contextlib.contextmanager
def _serving(gateway: Gateway) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(gateway), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _chat(paths: dict[str, tuple[str, str]], model: str, prompts: int) -> dict[str, dict[str, Any]]:
    """Streamed answers on each path (base URL, key), taking turns prompt by prompt, llama.cpp's prompt cache off
    (neither path gains from the other's work): ms to the first content chunk, completion tokens per second
    after it."""
    first_ms: dict[str, list[float]] = {name: [] for name in paths}
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(timeout=120) as client:
        for i in range(prompts):
            for name, (base_url, key) in paths.items():
                body = {"model": model, "stream": True, "max_tokens": 48, "temperature": 0, "seed": i,
                        "cache_prompt": False, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
                first, tokens, end = _stream(client, f"{base_url}/v1/chat/completions", key, body)
                if first is not None:
                    first_ms[name].append(first * 1000)
                    if tokens > 1 and end > first:
                        speeds[name].append((tokens - 1) / (end - first))
    return {name: {"n": len(first_ms[name]), "first_token_p50_ms": _pct(first_ms[name], 50),
                   "first_token_p95_ms": _pct(first_ms[name], 95),
                   "tokens_per_s": round(float(np.median(speeds[name])), 1) if speeds[name] else 0.0}
            for name in paths}


def _stream(client: httpx.Client, url: str, key: str, body: dict[str, Any]) -> tuple[float | None, int, float]:
    """Seconds to the first content chunk (None: no content), completion tokens, seconds to the end."""
    start, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
            tokens = int((chunk.get("usage") or {}).get("completion_tokens", tokens))
    return first, tokens, time.perf_counter() - start


async def _turns(url: str, key: str, model: str, prompts: int) -> dict[str, Any]:
    """One `llm` step's turn, answered upstream and answered on the device (no upstream: the flow's local path)."""
    routes = Routes(UpstreamSettings.model_validate({"endpoints": {"tier": {"base_url": f"{url}/v1", "api_key": key,
                                                                            "model": model, "timeout_s": 60}},
                                                     "routes": {"chat": [{"endpoint": "tier"}]}}))
    llm = RoutedLlm(routes, "chat", temperature=0.0)
    upstream: list[float] = []
    local: list[float] = []
    answered = 0
    try:
        for i in range(prompts):
            for sink, client in ((upstream, llm), (local, None)):
                engine = FlowEngine(parse_flow(FLOW), llm=client)
                await engine.start()
                start = time.perf_counter()
                await engine.on_speech(PROMPTS[i % len(PROMPTS)])
                sink.append((time.perf_counter() - start) * 1000)
                answered += client is not None and engine.record.steps == ["ask"]
    finally:
        await llm.aclose()
    return {"upstream_p50_ms": _pct(upstream, 50), "upstream_p95_ms": _pct(upstream, 95),
            "local_p50_ms": _pct(local, 50, 3), "local_p95_ms": _pct(local, 95, 3),
            "answered_upstream": answered, "of": prompts,
            "added_by_upstream_p50_ms": round(_pct(upstream, 50) - _pct(local, 50), 1)}


async def _fallbacks() -> dict[str, Any]:
    """ms until the flow's fallback speaks: refused, stalled (the budget), and the breaker open."""
    with _stalling() as stalled_url:
        refused_url = f"http://127.0.0.1:{free_port()}/v1"
        figures = {}
        for label, url in (("refused", refused_url), ("stalled", stalled_url)):
            routes = Routes(UpstreamSettings.model_validate({
                "endpoints": {"down": {"base_url": url, "timeout_s": 30, "breaker_failures": 2}},
                "routes": {"chat": [{"endpoint": "down", "budget_s": BUDGET_S}]}}))
            llm = RoutedLlm(routes, "chat")
            times = []
            try:
                for _ in range(3):  # two failures open the breaker; the third turn meets it open
                    engine = FlowEngine(parse_flow(FLOW), llm=llm)
                    await engine.start()
                    start = time.perf_counter()
                    await engine.on_speech("When do you open?")
                    assert engine.record.steps == ["ask", "person"], engine.record.steps
                    times.append(round((time.perf_counter() - start) * 1000, 1))
            finally:
                await llm.aclose()
            figures[f"{label}_ms"] = times[0]
            figures[f"{label}_then_breaker_open_ms"] = times[2]
    return {"budget_ms": BUDGET_S * 1000, **figures,
            "ratio_stalled_over_budget": _ratio(figures["stalled_ms"], BUDGET_S * 1000)}


@contextlib.contextmanager
def _stalling() -> Iterator[str]:
    """A TCP server that accepts and never answers (a hung upstream)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        sock.close()


def _pct(values: list[float], q: float, digits: int = 1) -> float:
    return round(float(np.percentile(values, q)), digits) if values else 0.0


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
