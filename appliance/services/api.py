"""The HTTP API as a supervised service: uvicorn serving the API app (with the kiosk page and WebRTC) on the
supervisor's loop, behind a gate that turns new work away while the appliance drains or sheds load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.supervisor.activation import Activation
from appliance.supervisor.service import ServiceError, TaskService

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Receive, Scope, Send

    from appliance.api.context import ApiServices
    from appliance.config import Settings

RETRY_AFTER_S = 10  # what a refused request is told while the appliance drains or sheds load


class Gate:
    """ASGI wrapper of the API app. While refusing (draining, memory pressure) new work gets 503 with
    Retry-After — POST requests, and WebSocket sessions are closed with 1013 "try again later" — while GETs
    (health, status, metrics, the kiosk page) and hang-ups still work."""

    def __init__(self, app: ASGIApp, refusing: Callable[[], bool]) -> None:
        self.app, self.refusing = app, refusing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and self.refusing():
            await send({"type": "websocket.close", "code": 1013, "reason": "busy: retry later"})
        elif kind == "http" and scope["method"] == "POST" and self.refusing():
            data = json.dumps({"error": {"message": "the appliance is not taking new work right now (stopping or "
                                         "short of memory); retry shortly", "type": "server_error",
                                         "code": "unavailable"}}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode()),
                                    (b"retry-after", str(RETRY_AFTER_S).encode())]})
            await send({"type": "http.response.body", "body": data})
        else:
            await self.app(scope, receive, send)


class ApiService(TaskService):
    """uvicorn serving the API app on the supervisor's loop; ready once it listens."""

    def __init__(self, settings: Settings, services: ApiServices, activation: Activation | None = None) -> None:
        super().__init__("api")
        self.settings, self.services = settings, services
        self.activation = activation or Activation()
        self.server: uvicorn.Server | None = None
        self.refusing = False
        self._stopping = False

    async def run(self) -> None:
        import uvicorn

        from appliance.api.app import create_app

        up = asyncio.Event()

        class Server(uvicorn.Server):
            def capture_signals(self) -> Any:  # the supervisor owns SIGTERM/SIGHUP, not uvicorn

                return contextlib.nullcontext()

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                up.set()  # listening (or failed: then serving ends)

        api = self.settings.api
        app = Gate(create_app(self.services), lambda: self.refusing)
        config = uvicorn.Config(app, host=api.host, port=api.port, log_level=self.settings.log.level,
                                log_config=None, lifespan="on", timeout_graceful_shutdown=3)
        self.server = server = Server(config)
        self._stopping = False
        passed = self.activation.stream(api.host, api.port)
        serving = asyncio.create_task(self._serve(server, passed), name="uvicorn")
        listening = asyncio.ensure_future(up.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if server.started:
            self.set_ready()
        await serving
        if not self._stopping:
            raise ServiceError("the HTTP server stopped on its own")

    @staticmethod
    async def _serve(server: uvicorn.Server, passed: socket.socket | None) -> None:
        """Serve on ``passed`` (socket activation) or on the configured address."""
        try:
            await server.serve([passed] if passed is not None else None)
        except SystemExit as exc:  # uvicorn exits on a failed start-up (port in use): in a task, that would end
            raise ServiceError(f"the HTTP server could not start (exit {exc.code}); see the log above") from None

    async def shutdown(self) -> None:
        self._stopping = True
        if self.server is not None:
            self.server.should_exit = True

    def live(self) -> int:
        realtime = sum(s.value for m in self.services.sessions.collect() for s in m.samples)
        return len(self.services.webrtc.sessions) + int(realtime)

    def refuse(self, refusing: bool) -> None:
        self.refusing = refusing

    async def reconfigure(self, settings: Settings) -> None:
        from appliance.api.limits import RateLimiter

        api = settings.api
        if api.rate_per_minute != self.services.settings.rate_per_minute:
            self.services.limiter = RateLimiter(api.rate_per_minute)
        self.services.webrtc.max_sessions = api.max_sessions
        self.services.settings = api
        self.settings = settings

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sessions": self.live(), "rate_per_minute": self.services.settings.rate_per_minute}
        if self.server is not None and self.server.started and self.server.servers:
            host, port = self.server.servers[0].sockets[0].getsockname()[:2]
            out["listen"] = f"{host}:{port}"
        return out
