"""The FastAPI app: /health (the only open route), /metrics, and the routers (OpenAI-compatible audio, realtime,
WebRTC, kiosk, SIP status).

Models warm in the background when the app starts; until they are ready, model routes answer 503 with
Retry-After (`ApiServices.ready_stack`) instead of making the client wait on a cold start. Under the supervisor
(``standalone=False``, `appliance run`) the models belong to the supervisor, which warms and stops them; a
standalone app (`ThreadedServer`: tests, benchmarks) warms and stops them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.api.auth import require_key, valid_key
from appliance.api.context import ApiServices
from appliance.api.keys import ApiKey
from appliance.api.limits import BodyLimit, error_body


def create_app(services: ApiServices) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        services.loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        if not services.standalone:
            yield
            await services.webrtc.close_all()
            return
        services.models.start()
        yield
        await services.webrtc.close_all()
        stack = services.models.current()
        if stack is not None:
            await stack.stop()

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
    async def health(request: Request) -> dict[str, Any]:
        """Liveness and readiness; the only route that needs no key. Under the supervisor it adds every
        service's state, and with a valid key the supervisor's whole status."""
        body: dict[str, Any] = {"status": "ok", **services.models.health()}
        full = valid_key(request)
        if services.supervisor is not None:
            view = services.supervisor()
            body["supervisor"] = view if full else public_view(view)
        if services.routes is not None and services.routes.endpoints:
            body["upstream"] = services.routes.snapshot(full)
        return body

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


def public_view(view: dict[str, Any]) -> dict[str, Any]:
    """What /health shows of the supervisor without a key: states only (no pids, addresses, memory or errors)."""
    return {"state": view.get("state"), "ready": view.get("ready"),
            "services": {name: unit.get("state") for name, unit in view.get("services", {}).items()}}
