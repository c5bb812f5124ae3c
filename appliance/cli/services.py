"""The appliance's own services, all on the supervisor's event loop: the HTTP API (uvicorn, with the kiosk page
and WebRTC), the phone (SIP) and the Wyoming servers, plus the models they share, loaded once and warmed in the
background so that READY never waits for them.

This is a composition root like ``appliance.device``: it wires the layers below, and only the entry point
(``appliance run``) imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.supervisor.service import ServiceError, TaskService
from appliance.voice.readiness import WARM_THREAD

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Receive, Scope, Send

    from appliance.api.context import ApiServices
    from appliance.bot.calls import CallAppFactory, CallInfo
    from appliance.bot.routing import FlowRouter
    from appliance.config import Settings
    from appliance.sip.service import SipService
    from appliance.voice.readiness import VoiceModels
    from appliance.wyoming.server import WyomingServers

log = logging.getLogger(__name__)
RETRY_AFTER_S = 10  # what a refused request is told while the appliance drains or sheds load


def exit_now(code: int) -> None:
    """Exit at once if the models are still loading: the interpreter's normal teardown would run while a
    runtime initialises in the loading thread, and ONNX Runtime aborts then (SIGABRT, a core dump under
    systemd). Everything of ours has been stopped and flushed by now; logs are flushed here."""
    if any(t.name == WARM_THREAD and t.is_alive() for t in threading.enumerate()):  # VoiceModels' loader
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


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

    def __init__(self, settings: Settings, services: ApiServices) -> None:
        super().__init__("api")
        self.settings, self.services = settings, services
        self.server: uvicorn.Server | None = None
        self.refusing = False
        self._stopping = False

    async def run(self) -> None:
        import uvicorn

        from appliance.api.app import create_app

        class Server(uvicorn.Server):
            def capture_signals(self) -> Any:  # the supervisor owns SIGTERM/SIGHUP, not uvicorn

                return contextlib.nullcontext()

        api = self.settings.api
        app = Gate(create_app(self.services), lambda: self.refusing)
        config = uvicorn.Config(app, host=api.host, port=api.port, log_level=self.settings.log.level,
                                log_config=None, lifespan="on", timeout_graceful_shutdown=3)
        self.server = server = Server(config)
        self._stopping = False
        serving = asyncio.create_task(self._serve(server), name="uvicorn")
        while not serving.done() and not server.started:
            await asyncio.wait({serving}, timeout=0.05)
        if server.started:
            self.set_ready()
        await serving
        if not self._stopping:
            raise ServiceError("the HTTP server stopped on its own")

    @staticmethod
    async def _serve(server: uvicorn.Server) -> None:
        try:
            await server.serve()
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


class SipTask(TaskService):
    """The phone and its registrations. New calls are routed to the flows while the stack is warm and the
    supervisor is not refusing; otherwise they get 503 with Retry-After."""

    def __init__(self, settings: Settings, services: ApiServices) -> None:
        super().__init__("sip")
        self.settings, self.services = settings, services
        self.sip: SipService | None = None
        self.router: FlowRouter | None = None
        self.refusing = False
        self._stop = asyncio.Event()
        self._retired: list[FlowRouter] = []  # replaced by a reload; live calls may still use their LLM client

    async def run(self) -> None:
        from appliance.sip.service import SipService

        self._stop.clear()
        self.router = await asyncio.to_thread(self._make_router, self.settings)
        self.sip = SipService(self.settings.sip, self._route)
        await self.sip.start()
        self.services.sip = self.sip  # for GET /v1/sip/status
        self.set_ready()
        try:
            await self._stop.wait()
        finally:
            self.services.sip = None
            await self.sip.stop()
            for router in (*self._retired, self.router):
                await router.aclose()
            self._retired.clear()

    def _make_router(self, settings: Settings) -> FlowRouter:
        from appliance.bot.routing import FlowRouter

        return FlowRouter(settings.bot, settings.upstream, self.services.models)

    def _route(self, info: CallInfo) -> CallAppFactory | None:
        from appliance.bot.calls import NotReady

        if self.refusing:
            raise NotReady("the appliance is stopping or short of memory")
        assert self.router is not None
        return self.router(info)

    async def shutdown(self) -> None:
        self._stop.set()

    def live(self) -> int:
        return len(self.sip.phone.calls) if self.sip is not None else 0

    def refuse(self, refusing: bool) -> None:
        self.refusing = refusing

    async def reconfigure(self, settings: Settings) -> None:
        """Capacity, Retry-After and ringing apply to the next call; changed flows, bot or upstream settings
        take a new router, used by the next call (live calls keep theirs)."""
        conf, old = settings.sip, self.settings
        if self.sip is not None:
            phone = self.sip.phone
            phone.options = dataclasses.replace(phone.options, max_calls=conf.max_calls,
                                                retry_after_s=conf.retry_after_s, ring_s=conf.ring_s)
            self.sip.settings = conf
        if self.router is not None and (settings.bot != old.bot or settings.upstream != old.upstream):
            self._retired.append(self.router)
            self.router = await asyncio.to_thread(self._make_router, settings)
        self.settings = settings

    def health(self) -> dict[str, Any]:
        if self.sip is None:
            return {}
        return {"listen": f"{self.settings.sip.host}:{self.sip.phone.agent.port}", "calls": self.live(),
                "max_calls": self.sip.phone.options.max_calls}


class WyomingTask(TaskService):
    """The Wyoming STT and TTS servers on the shared stack (one copy of the models for every service)."""

    def __init__(self, settings: Settings, models: VoiceModels) -> None:
        super().__init__("wyoming")
        self.settings, self.models = settings, models
        self.servers: WyomingServers | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        from appliance.wyoming.server import WyomingServers

        conf = self.settings.wyoming
        self._stop.clear()
        self.servers = WyomingServers(self.models.wait, conf.stt_uri, conf.tts_uri, conf.allow)
        await self.servers.start()
        self.set_ready()
        try:
            await self._stop.wait()
        finally:
            await self.servers.stop()

    async def shutdown(self) -> None:
        self._stop.set()

    def live(self) -> int:
        return len(self.servers.sessions) if self.servers is not None else 0

    def health(self) -> dict[str, Any]:
        conf = self.settings.wyoming
        return {"listen": f"{conf.stt_uri} (STT), {conf.tts_uri} (TTS)", "sessions": self.live()}
