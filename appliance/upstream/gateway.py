"""`appliance upstream serve`'s HTTP face: an OpenAI-compatible gateway in front of the chat models a site hosts
(each a llama.cpp server in a child process, ``appliance.upstream.llama``) and, when it has them, transcription,
translation and speech (the device API's audio routes on the tier's own voice stack and key store).

Every route but ``/health`` needs an API key (``appliance upstream key create NAME``; stored hashed, the
device API's key store). Per key: a request rate (token bucket) and a daily token budget, both answered with
429 and Retry-After when spent. ``/metrics`` (Prometheus) counts requests by model and outcome, tokens, quota
refusals and request time. A backend that fails or is gone gives 503 in the OpenAI error shape, so a device's
circuit breaker opens and its local path answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from appliance.api.auth import presented_token
from appliance.api.context import ApiServices
from appliance.api.keys import ApiKey, KeyStore
from appliance.api.limits import RateLimiter, error_body
from appliance.upstream.llama import LlamaServer

DAY_S = 86_400.0
WATCH_S = 5.0  # how often a dead backend is noticed and started again
log = logging.getLogger(__name__)


@dataclass
class Quota:
    """Per key: requests per minute and tokens (prompt + completion) per day."""

    per_minute: int = 60
    tokens_per_day: int = 200_000


class TokenBudget:
    """Tokens spent per key in the current day (UTC), counted from the backends' usage figures."""

    def __init__(self, per_day: int) -> None:
        self.per_day = per_day
        self._spent: dict[str, tuple[int, int]] = {}  # key id -> (day number, tokens)
        self._lock = threading.Lock()

    def left(self, key: str) -> int:
        day = int(time.time() // DAY_S)
        with self._lock:
            spent_day, spent = self._spent.get(key, (day, 0))
            return self.per_day - (spent if spent_day == day else 0)

    def spend(self, key: str, tokens: int) -> None:
        day = int(time.time() // DAY_S)
        with self._lock:
            spent_day, spent = self._spent.get(key, (day, 0))
            self._spent[key] = (day, (spent if spent_day == day else 0) + tokens)


@dataclass
class Gateway:
    backends: dict[str, LlamaServer]  # public model name -> its server
    keys: KeyStore
    quota: Quota = field(default_factory=Quota)
    timeout_s: float = 120.0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    audio: ApiServices | None = None  # transcription, translation and speech: the device API's audio routes

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.quota.per_minute)
        self.budget = TokenBudget(self.quota.tokens_per_day)
        self.requests = Counter("upstream_requests", "Requests by model and outcome.", ["model", "outcome"],
                                registry=self.registry)
        self.tokens = Counter("upstream_tokens", "Tokens by model and kind.", ["model", "kind"], registry=self.registry)
        self.refusals = Counter("upstream_quota_refusals", "Requests refused by a quota.", ["quota"],
                                registry=self.registry)
        self.seconds = Histogram("upstream_request_seconds", "Time to the whole answer.", ["model"],
                                 registry=self.registry)
        self.client = httpx.AsyncClient(timeout=self.timeout_s)
        if self.audio is not None:
            self.registry.register(self.audio.registry)  # its audio counters in the tier's /metrics


def _refuse(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> HTTPException:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error"
    return HTTPException(status, error_body(message, kind, code), headers=headers)


def key_of(request: Request) -> ApiKey:
    gateway: Gateway = request.app.state.gateway
    token = presented_token(request)
    key, reason = gateway.keys.check(token) if token else (None, "")
    if key is None or reason == "revoked":
        raise _refuse(401, "missing or invalid API key (make one with `appliance upstream key create NAME`)",
                      "invalid_api_key", {"WWW-Authenticate": "Bearer"})
    return key


Key = Annotated[ApiKey, Depends(key_of)]  # module level: the annotations are strings (postponed evaluation)


def make_app(gateway: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch = asyncio.create_task(_watch(gateway))
        if gateway.audio is not None:
            gateway.audio.models.start()  # warms in the background: 503 with Retry-After until then
        yield
        watch.cancel()
        await gateway.client.aclose()
        stack = gateway.audio.models.current() if gateway.audio is not None else None
        if stack is not None:
            await stack.stop()

    app = FastAPI(title="appliance upstream tier", docs_url=None, redoc_url=None, lifespan=lifespan)

    app.state.gateway = gateway
    app.state.services = gateway.audio  # the audio routes' context (they authenticate with the same key store)

    @app.exception_handler(HTTPException)
    async def openai_errors(request: Request, exc: HTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else error_body(str(exc.detail), "api_error", "error")
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    @app.get("/health")
    async def health() -> JSONResponse:
        up = {name: server.alive() for name, server in gateway.backends.items()}
        body: dict[str, Any] = {"status": "ok" if all(up.values()) else "degraded", "models": up}
        if gateway.audio is not None:
            body["audio"] = gateway.audio.models.state  # loading, ready or failed: the voice stack
        return JSONResponse(body, 200 if any(up.values()) else 503)

    @app.get("/v1/models")
    async def models(key: Key) -> dict[str, Any]:
        audio = ["whisper-1", "tts-1"] if gateway.audio is not None else []
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "appliance-upstream"}
                                           for name in [*gateway.backends, *audio]]}

    @app.get("/metrics")
    async def metrics(key: Key) -> Response:
        return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request, key: Key) -> Response:
        wait = gateway.limiter.take(key.id)
        if wait:
            gateway.refusals.labels("rate").inc()
            raise _refuse(429, f"rate limit of {gateway.quota.per_minute} requests per minute", "rate_limited",
                          {"Retry-After": str(max(1, round(wait)))})
        if gateway.budget.left(key.id) <= 0:
            gateway.refusals.labels("tokens").inc()
            retry = int(DAY_S - time.time() % DAY_S) + 1
            raise _refuse(429, f"daily budget of {gateway.quota.tokens_per_day} tokens spent", "tokens_spent",
                          {"Retry-After": str(retry)})
        try:
            body = await request.json()
        except ValueError:
            raise _refuse(400, "the body is not JSON", "invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _refuse(400, "a chat request needs 'messages'", "invalid_request")
        name = str(body.get("model") or next(iter(gateway.backends)))
        if name not in gateway.backends:  # "default" and unknown names go to the first model
            name = next(iter(gateway.backends))
        server = gateway.backends[name]
        body["model"] = name
        started = time.perf_counter()
        try:
            if body.get("stream"):
                return await _stream(gateway, server, name, body, key)
            reply = await gateway.client.post(f"{server.base_url}/v1/chat/completions", json=body,
                                              headers={"Authorization": f"Bearer {server.key}"})
        except httpx.HTTPError as exc:
            gateway.requests.labels(name, "unavailable").inc()
            raise _refuse(503, f"model {name} is unavailable ({type(exc).__name__})", "backend_unavailable") from None
        if reply.status_code != 200:
            gateway.requests.labels(name, f"http_{reply.status_code}").inc()
            raise _refuse(503 if reply.status_code >= 500 else 400, f"model {name} refused the request "
                          f"(HTTP {reply.status_code})", "backend_error")
        data = reply.json()
        usage = data.get("usage") or {}
        _count(gateway, name, key, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        gateway.seconds.labels(name).observe(time.perf_counter() - started)
        data["model"] = name
        return JSONResponse(data)

    if gateway.audio is not None:
        from appliance.api import openai_audio

        app.include_router(openai_audio.router)  # after the routes above: this /v1/models is the tier's
    return app


async def _watch(gateway: Gateway) -> None:
    """A backend that died (a crash of the native server) is started again; /health says degraded meanwhile."""
    while True:
        await asyncio.sleep(WATCH_S)
        for name, server in gateway.backends.items():
            if not server.alive():
                log.warning("model %s: its llama.cpp server is gone (%s); starting it again", name, server.tail(2))
                try:
                    await asyncio.to_thread(server.start)
                except Exception as exc:  # kept going: the next round tries again
                    log.error("model %s could not start again: %s", name, exc)


def _count(gateway: Gateway, name: str, key: ApiKey, prompt: int, completion: int) -> None:
    gateway.requests.labels(name, "ok").inc()
    gateway.tokens.labels(name, "prompt").inc(prompt)
    gateway.tokens.labels(name, "completion").inc(completion)
    gateway.budget.spend(key.id, prompt + completion)


async def _stream(gateway: Gateway, server: LlamaServer, name: str, body: dict[str, Any], key: ApiKey) -> Response:
    """Server-sent events passed through as they come; usage counted from the last chunk that carries it."""
    body = {**body, "stream_options": {"include_usage": True}}
    request = gateway.client.build_request("POST", f"{server.base_url}/v1/chat/completions", json=body,
                                           headers={"Authorization": f"Bearer {server.key}"})
    reply = await gateway.client.send(request, stream=True)
    if reply.status_code != 200:
        await reply.aclose()
        gateway.requests.labels(name, f"http_{reply.status_code}").inc()
        raise _refuse(503, f"model {name} refused the request (HTTP {reply.status_code})", "backend_error")

    async def relay() -> AsyncIterator[bytes]:
        usage: dict[str, Any] = {}
        try:
            async for line in reply.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage") or usage
                yield (line + "\n").encode()
        finally:
            await reply.aclose()
            _count(gateway, name, key, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    return StreamingResponse(relay(), media_type="text/event-stream")
