"""The phone as a supervised service: SIP and its registrations, calls routed to the configured flows on the
shared voice models."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from appliance.supervisor.activation import Activation
from appliance.supervisor.service import TaskService

if TYPE_CHECKING:
    from appliance.api.context import ApiServices
    from appliance.bot.routing import FlowRouter
    from appliance.calls import CallAppFactory, CallInfo
    from appliance.config import Settings
    from appliance.sip.service import SipService
    from appliance.sip.transport import Bound

log = logging.getLogger(__name__)


class SipTask(TaskService):
    """The phone and its registrations. New calls are routed to the flows while the stack is warm and the
    supervisor is not refusing; otherwise they get 503 with Retry-After."""

    def __init__(self, settings: Settings, services: ApiServices, activation: Activation | None = None) -> None:
        super().__init__("sip")
        self.settings, self.services = settings, services
        self.activation = activation or Activation()
        self.sip: SipService | None = None
        self.router: FlowRouter | None = None
        self.refusing = False
        self._stop = asyncio.Event()
        self._retired: list[FlowRouter] = []  # replaced by a reload; live calls may still use their LLM client

    async def run(self) -> None:
        from appliance.sip.service import SipService

        self._stop.clear()
        self.sip = SipService(self.settings.sip, self._route, self._passed())
        await self.sip.start()
        self.services.sip = self.sip  # for GET /v1/sip/status
        self.set_ready()
        try:
            # after listening (READY=1 comes sooner); the models are still warming, so no call is lost by it
            self.router = await asyncio.to_thread(self._make_router, self.settings)
            await self._stop.wait()
        finally:
            self.services.sip = None
            await self.sip.stop()
            for router in (*self._retired, *([self.router] if self.router is not None else [])):
                await router.aclose()
            self._retired.clear()
            self.router = None

    def _passed(self) -> Bound | None:
        """SIP's UDP and TCP sockets when systemd passed both (one without the other: bind both here)."""
        host, port = self.settings.sip.host, self.settings.sip.port
        udp, tcp = self.activation.datagram(host, port), self.activation.stream(host, port)
        if udp is not None and tcp is not None:
            return udp, tcp
        for sock, kind in ((udp, "UDP"), (tcp, "TCP")):
            if sock is not None:
                log.warning("systemd passed SIP's %s socket on %s:%d but not the other: binding both here (add "
                            "the other to appliance.socket)", kind, host, port)
                sock.close()
        return None

    def _make_router(self, settings: Settings) -> FlowRouter:
        from appliance.bot.routing import FlowRouter
        from appliance.config.upstream import UpstreamSettings
        from appliance.runtime.routes import Routes

        routes = self.services.routes or Routes(UpstreamSettings())  # none: no upstream (tests wire none)
        return FlowRouter(settings.bot, routes, self.services.models)

    def _route(self, info: CallInfo) -> CallAppFactory | None:
        from appliance.calls import NotReady

        if self.refusing:
            raise NotReady("the appliance is stopping or short of memory")
        if self.router is None:
            raise NotReady("the call flows are still loading")
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
