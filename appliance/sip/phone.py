"""The SIP phone service: answers INVITEs (capacity, routing to an application, SDP, media) and places calls.

Beyond capacity a new call gets 503 with Retry-After at once, never silence; a dialled number with no
application gets 404; an offer with nothing in common gets 488 naming what was offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.calls import CallAppFactory, CallInfo, NotReady
from appliance.errors import ApplianceError
from appliance.sip.agent import ALLOW, SUPPORTED, UserAgent
from appliance.sip.call import Call
from appliance.sip.dialog import Dialog, new_tag
from appliance.sip.digest import DigestClient
from appliance.sip.guard import PRIVATE, CallerGuard
from appliance.sip.media import RATE, PortRange, RtpSession
from appliance.sip.message import Request
from appliance.sip.outbound import new_request, send_authenticated
from appliance.sip.sdp import SdpError, accept, answer, parse_sdp, render
from appliance.sip.sdp import offer as sdp_offer
from appliance.sip.transaction import ServerTransaction, Timers
from appliance.sip.transport import Bound, Source
from appliance.sip.uri import Address, SipSyntaxError, SipUri

log = logging.getLogger(__name__)


class CallFailed(ApplianceError):
    """An outbound call that was not answered (the reason is the final status)."""

# Which application answers a call: None means nobody (404).
Router = Callable[[CallInfo], CallAppFactory | None]


@dataclass(frozen=True)
class PhoneOptions:
    host: str = "0.0.0.0"
    port: int = 5060
    advertise: str | None = None  # the address put in Contact and SDP; default: the interface facing the peer
    rtp_ports: tuple[int, int] = (10000, 20000)
    max_calls: int = 8
    retry_after_s: int = 10
    ring_s: float = 0.0  # how long to ring before answering (a CANCEL may come meanwhile)
    codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    timers: Timers = field(default_factory=Timers)
    allow: tuple[str, ...] = PRIVATE  # networks that may call; empty: any
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # digest users who may call; empty: anyone


@dataclass
class PhoneStats:
    answered: int = 0
    rejected_busy: int = 0
    rejected_other: int = 0
    cancelled: int = 0
    ended: dict[str, int] = field(default_factory=dict)


class Phone:
    def __init__(self, options: PhoneOptions, router: Router, sockets: Bound | None = None) -> None:
        """``sockets``: SIP's UDP and TCP sockets, already bound (socket activation); else it binds its own."""
        self.options = options
        self.router = router
        self.agent = UserAgent(options.host, options.port, options.timers, advertise=options.advertise,
                               sockets=sockets)
        self.agent.handlers["INVITE"] = self._invite
        self.guard = CallerGuard(list(options.allow), dict(options.users))
        self.calls: dict[str, Call] = {}
        self.stats = PhoneStats()
        self._pending = 0  # INVITEs being set up: they count against capacity too

    async def start(self) -> None:
        await self.agent.start()
        log.info("SIP listening on %s:%d (UDP and TCP)", self.options.host, self.agent.port)

    async def stop(self) -> None:
        """Hang up every call (BYE), then close the transport."""
        await asyncio.gather(*(call.hangup("service stopping") for call in list(self.calls.values())),
                             return_exceptions=True)
        await self.agent.stop()

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        calls = [{"call_id": c.info.call_id, "caller": c.info.caller, "called": c.info.called,
                  "seconds": round(now - c.started, 1), "codec": c.negotiated.codec if c.negotiated else None}
                 for c in self.calls.values()]
        return {"port": self.agent.port, "calls": calls, "max_calls": self.options.max_calls,
                "answered": self.stats.answered, "rejected_busy": self.stats.rejected_busy,
                "cancelled": self.stats.cancelled, "ended": dict(self.stats.ended)}

    async def _invite(self, request: Request, tx: ServerTransaction, source: Source) -> None:
        agent = self.agent
        verdict = self.guard.check(request, source.addr[0])
        if verdict.status:
            self.stats.rejected_other += 1
            if verdict.challenge is not None:
                agent.respond(tx, 401, verdict.reason, WWW_Authenticate=str(verdict.challenge))
            else:
                agent.respond(tx, verdict.status, verdict.reason)
            return
        if len(self.calls) + self._pending >= self.options.max_calls:
            self.stats.rejected_busy += 1
            agent.respond(tx, 503, "Service Unavailable", Retry_After=str(self.options.retry_after_s))
            return
        info = CallInfo(request.call_id, str(request.from_.uri), request.uri.user or "")
        try:
            factory = self.router(info)
        except NotReady as exc:
            log.info("call %s turned away: %s", info.call_id, exc)
            self.stats.rejected_busy += 1
            agent.respond(tx, 503, "Service Unavailable", Retry_After=str(self.options.retry_after_s))
            return
        if factory is None:
            self.stats.rejected_other += 1
            agent.respond(tx, 404, "Not Found")
            return
        local = agent.host_for(source.addr[0])
        self._pending += 1
        try:
            await self._answer(request, tx, source, info, factory, local)
        finally:
            self._pending -= 1

    async def _answer(self, request: Request, tx: ServerTransaction, source: Source, info: CallInfo,
                      factory: CallAppFactory, local: str) -> None:
        agent = self.agent
        holder: list[Call] = []
        late = not request.body  # no offer: ours goes in the 200, the answer comes in the ACK (§13.2.1)
        try:
            offered = None if late else parse_sdp(request.body)
            media = await self._open_media(local, holder)
        except SdpError as exc:
            self.stats.rejected_other += 1
            agent.respond(tx, 488, "Not Acceptable Here", Warning=f'305 appliance "{exc}"')
            return
        except ApplianceError as exc:
            log.warning("no RTP port for a call: %s", exc)
            self.stats.rejected_busy += 1
            agent.respond(tx, 503, "Service Unavailable", Retry_After=str(self.options.retry_after_s))
            return
        try:
            if offered is None:
                session, negotiated = sdp_offer(local, media.local_port, self.options.codecs), None
            else:
                session, negotiated = answer(offered, local, media.local_port, self.options.codecs)
        except SdpError as exc:
            await media.stop()
            self.stats.rejected_other += 1
            agent.respond(tx, 488, "Not Acceptable Here", Warning=f'305 appliance "{exc}"')
            return
        ringing = agent.respond(tx, 180, "Ringing")
        dialog = Dialog.as_uas(request, ringing.to.tag or new_tag(), source.transport)
        call = Call(agent, dialog, media, negotiated, info, local, self._ended, session, self.options.codecs)
        if negotiated is None:
            call.expect_answer(request.cseq[0], session)
        cancelled = asyncio.Event()
        tx.on_cancel = cancelled.set
        if self.options.ring_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), self.options.ring_s)
        app = None
        try:
            if not cancelled.is_set():
                app = await factory(call, media.speaker, RATE)
        except Exception as exc:
            log.warning("call %s: the application failed to start: %s", info.call_id, exc)
            agent.respond(tx, 500, "Server Internal Error")
            await media.stop()
            return
        if app is None or cancelled.is_set() or tx.final_sent:  # CANCEL won the race: the agent sent 487
            self.stats.cancelled += 1
            if app is not None:
                await app.close()
            await media.stop()
            return
        holder.append(call)
        agent.dialogs[dialog.id] = call
        self.calls[info.call_id] = call
        self.stats.answered += 1
        call.run(app)
        if negotiated is not None:
            media.start(negotiated)
        contact = agent.contact(source.addr[0], transport=source.transport)
        ok = agent.response(tx, 200, "OK", render(session), Contact=contact, Allow=ALLOW, Supported=SUPPORTED)
        if not await agent.respond_2xx(tx, ok):  # no ACK within 64·T1: the call cannot go on (§13.3.1.4)
            await call.hangup("no ACK")

    async def call(self, target: str, factory: CallAppFactory, user: str = "appliance",
                   digest: DigestClient | None = None) -> Call:
        """Place a call to ``target`` (a SIP URI) and run ``factory``'s app on it once answered. Raises
        CallFailed with the final status when it is not answered."""
        agent = self.agent
        try:
            uri = SipUri.parse(target)
        except SipSyntaxError as exc:
            raise CallFailed(str(exc)) from None
        if len(self.calls) + self._pending >= self.options.max_calls:
            raise CallFailed(f"already {len(self.calls)} calls (sip.max_calls)")
        try:
            destination, transport = await agent.resolve(uri)
        except OSError as exc:
            raise CallFailed(f"cannot resolve {uri.host}: {exc}") from None
        local = agent.host_for(destination[0])
        holder: list[Call] = []
        media = await self._open_media(local, holder)
        self._pending += 1
        try:
            ours = sdp_offer(local, media.local_port, self.options.codecs)
            sender = Address(SipUri("sip", local, user, port=agent.port))
            request = new_request(agent, "INVITE", uri, sender, Address(uri), destination[0], transport)
            request.add("Content-Type", "application/sdp")
            request.body = render(ours)
            request, response = await send_authenticated(agent, request, destination, transport, digest)
            if not 200 <= response.status < 300:
                raise CallFailed(f"{response.status} {response.reason}".strip())
            dialog = Dialog.as_uac(request, response, transport)
            info = CallInfo(request.call_id, str(sender.uri), uri.user or str(uri))
            call = Call(agent, dialog, media, None, info, local, self._ended, ours, self.options.codecs)
            try:
                call.negotiated = accept(ours, parse_sdp(response.body))
            except SdpError as exc:
                await call.acknowledge()
                await call.hangup(f"unusable answer: {exc}")
                raise CallFailed(f"unusable SDP answer: {exc}") from None
        except BaseException:
            if not holder:
                await media.stop()
            raise
        finally:
            self._pending -= 1
        holder.append(call)
        agent.dialogs[dialog.id] = call
        self.calls[info.call_id] = call
        try:
            call.run(await factory(call, media.speaker, RATE))
        except Exception as exc:
            await call.acknowledge()
            await call.hangup("application failed")
            raise CallFailed(f"the application failed to start: {exc}") from exc
        assert call.negotiated is not None
        media.start(call.negotiated)
        await call.acknowledge()
        return call

    async def _open_media(self, local: str, holder: list[Call]) -> RtpSession:
        """An RTP session in the configured range whose audio and keys go to the call put in ``holder`` once
        it exists (the port must be known before the call is)."""
        return await RtpSession.open(local if self.options.advertise is None else self.options.host,
                                     PortRange(*self.options.rtp_ports),
                                     lambda samples: holder[0].audio(samples) if holder else None,
                                     lambda digit: holder[0].dtmf(digit) if holder else None)

    def _ended(self, call: Call) -> None:
        self.calls.pop(call.info.call_id, None)
        reason = call.ended.result() if call.ended.done() else "unknown"
        self.stats.ended[reason] = self.stats.ended.get(reason, 0) + 1
