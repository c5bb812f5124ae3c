"""The FastAPI app: /health (the only open route), /metrics, and the OpenAI-compatible audio API.

Models warm in the background when the app starts; until they are ready, model routes answer 503 with
Retry-After instead of making the client wait on a cold start. Under the supervisor (``standalone=False``) the
models and the phone belong to the supervisor: it warms the stack into ``services.stack``, runs the phone and
stops both; the app only serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from appliance.api.keys import ApiKey, KeyStore
from appliance.api.limits import BodyLimit, RateLimiter, error_body
from appliance.config.settings import ApiSettings
from appliance.sip.service import SipService
from appliance.voice.stack import VoiceStack
from appliance.webrtc.hub import WebRtcHub

WARMING_RETRY_S = 5
KEY_COOKIE = "appliance_key"  # set by the kiosk's sign-in form; the same key as a Bearer token


@dataclass
class ApiServices:
    """What the routes need, wired once by the entry point."""

    settings: ApiSettings
    keys: KeyStore
    make_stack: Callable[[], VoiceStack]
    models: Callable[[], list[str]]  # provisioned model ids
    stack: VoiceStack | None = None
    warm_error: str | None = None
    sip: SipService | None = None  # the phone, when this process answers calls
    standalone: bool = True  # the app's lifespan warms the stack, starts and stops `sip`, stops the stack
    limiter: RateLimiter = field(init=False)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_per_minute)
        self.requests = Counter("appliance_http_requests", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("appliance_http_request_seconds", "HTTP request time", ["route"],
                                 registry=self.registry)
        self.sessions = Gauge("appliance_stream_sessions", "Open realtime sessions", registry=self.registry)
        self.webrtc = WebRtcHub(self.settings.max_sessions)
        Gauge("appliance_webrtc_sessions", "Open WebRTC sessions", registry=self.registry).set_function(
            lambda: len(self.webrtc.sessions))
        self.loop_tasks = Gauge("appliance_event_loop_tasks", "Tasks alive on the server's event loop",
                                registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.audio_seconds = Counter("appliance_audio_seconds", "Seconds of audio processed", ["task"],
                                     registry=self.registry)

    def ready_stack(self) -> VoiceStack:
        if self.stack is None:
            if self.warm_error:
                raise HTTPException(503, error_body(f"models failed to load: {self.warm_error}", "server_error",
                                                    "models_unavailable"))
            raise HTTPException(503, error_body("models are warming up; retry shortly", "server_error", "warming"),
                                headers={"Retry-After": str(WARMING_RETRY_S)})
        return self.stack


def create_app(services: ApiServices) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        services.loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        if not services.standalone:
            yield
            await services.webrtc.close_all()
            return
        warm = asyncio.create_task(_warm(services))
        if services.sip is not None:
            await services.sip.start()
        yield
        warm.cancel()
        if services.sip is not None:
            await services.sip.stop()
        await services.webrtc.close_all()
        with contextlib.suppress(asyncio.CancelledError):
            await warm
        if services.stack is not None:
            await services.stack.stop()

    # No unauthenticated docs: the schema is served behind a key, and the Swagger UI (a CDN page) not at all.
    app = FastAPI(title="Edge voice appliance", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.services = services

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else error_body(str(exc.detail), "invalid_request_error",
                                                                            str(exc.status_code))
        return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def _measure(request: Request, call_next: Callable[[Request], Any]) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        services.requests.labels(route, str(response.status_code)).inc()
        services.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.get("/health", tags=["device"])
    async def health() -> dict[str, Any]:
        """Liveness and readiness; the only route that needs no key."""
        return {"status": "ok", "ready": services.stack is not None, "error": services.warm_error}

    @app.get("/openapi.json", tags=["device"], include_in_schema=False)
    async def openapi(key: ApiKey = Depends(require_key)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/metrics", tags=["device"])
    async def metrics(key: ApiKey = Depends(require_key)) -> Response:
        return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)

    from appliance.api import kiosk_page, openai_audio, realtime, sip_routes, webrtc_routes

    app.include_router(openai_audio.router)
    app.include_router(realtime.router)
    app.include_router(webrtc_routes.router)
    app.include_router(kiosk_page.router)
    app.include_router(sip_routes.router)
    app.add_middleware(BodyLimit, max_bytes=int(services.settings.max_upload_mb * 2**20))
    return app


async def _warm(services: ApiServices) -> None:
    try:
        services.stack = await asyncio.to_thread(services.make_stack)
    except Exception as exc:  # reported by /health and as 503s, never a crash of the server
        services.warm_error = str(exc)


def presented_token(request: Request) -> str | None:
    """The key a request presents: 'Authorization: Bearer <key>', else the kiosk's sign-in cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and request.cookies.get(KEY_COOKIE):
        scheme, token = "bearer", request.cookies[KEY_COOKIE]
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_key(request: Request) -> ApiKey:
    """Bearer authentication and the per-key rate limit."""
    services: ApiServices = request.app.state.services
    token = presented_token(request)
    if token is None:
        raise HTTPException(401, error_body("missing API key: send 'Authorization: Bearer <key>' (create one with "
                                            "`appliance keys create NAME`)", "invalid_request_error", "missing_key"),
                            headers={"WWW-Authenticate": "Bearer"})
    key, reason = services.keys.check(token)
    if key is None:
        raise HTTPException(401, error_body("invalid API key", "invalid_request_error", "invalid_api_key"),
                            headers={"WWW-Authenticate": "Bearer"})
    if reason == "revoked":
        raise HTTPException(403, error_body(f"API key {key.id} ({key.name}) was revoked", "invalid_request_error",
                                            "revoked_key"))
    wait = services.limiter.take(key.id)
    if wait:
        raise HTTPException(429, error_body(f"rate limit of {services.settings.rate_per_minute} requests per "
                                            "minute exceeded", "rate_limit_error", "rate_limited"),
                            headers={"Retry-After": str(max(1, round(wait)))})
    return key
