"""One SIP call (a dialog with an audio session) from answer to hang-up, and what the bot may do to it.

The call answers in-dialog requests (BYE, re-INVITE for hold and resume, INFO key presses, NOTIFY of a
transfer's progress), carries the RTP session's audio and key presses to its application, and implements
the application's hang-up and transfer (REFER, RFC 3515) as SIP requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from appliance.audio.frame import int16_to_float32
from appliance.calls import CallApp, CallInfo
from appliance.sip.agent import UserAgent
from appliance.sip.dialog import Dialog
from appliance.sip.media import RtpSession
from appliance.sip.message import Request, Response
from appliance.sip.sdp import Negotiated, SdpError, Session, accept, answer, offer, parse_sdp, render
from appliance.sip.transaction import ServerTransaction
from appliance.sip.uri import Address, SipUri

log = logging.getLogger(__name__)
TRANSFER_TIMEOUT_S = 30.0


class Call:
    def __init__(self, agent: UserAgent, dialog: Dialog, media: RtpSession, negotiated: Negotiated | None,
                 info: CallInfo, local_address: str, on_end: Callable[[Call], None], sdp: Session | None = None,
                 codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")) -> None:
        self.agent, self.dialog, self.media, self.info = agent, dialog, media, info
        self.negotiated = negotiated
        self.local_address = local_address
        self.on_end = on_end
        self.sdp = sdp  # the last SDP we sent (offer or answer): later ones keep its o= line (RFC 3264 §8)
        self.codecs = codecs  # the ones we take, in order of preference
        self.app: CallApp | None = None
        self.started = time.monotonic()
        self.answered_at: float | None = None
        self.ended = asyncio.get_running_loop().create_future()  # resolves with the reason
        self._notify: asyncio.Queue[int] = asyncio.Queue()
        self._audio: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._offered: tuple[int, Session] | None = None  # our offer in the 2xx to an offerless re-INVITE

    # ---- the application's side (CallControl)

    async def hangup(self, reason: str = "bot hung up") -> None:
        if self.ended.done():
            return
        await self._request("BYE")
        await self.end(reason)

    async def transfer(self, target: str) -> bool:
        """REFER the caller to ``target``; on a NOTIFY saying the new call was answered, hang up (§2.4.5)."""
        uri = target if target.startswith(("sip:", "sips:", "tel:")) else \
            f"sip:{target}@{self.dialog.remote_target.host}"
        try:
            SipUri.parse(uri)
        except Exception:
            log.warning("transfer target %r is not a SIP URI", target)
            return False
        response = await self._request("REFER", headers={"Refer-To": f"<{uri}>",
                                                         "Referred-By": str(self.dialog.local)})
        if response is None or response.status >= 300:
            return False
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                status = await asyncio.wait_for(self._notify.get(), left)
            except TimeoutError:
                break
            if status >= 200:
                if status < 300:
                    await self.hangup("transferred")
                    return True
                return False
        return False

    # ---- the peer's side

    async def on_request(self, request: Request, tx: ServerTransaction) -> None:
        if not self.dialog.accepts(request):
            self.agent.respond(tx, 500, "Server Internal Error", Retry_After="1")  # out-of-order CSeq (§12.2.2)
            return
        method = request.method
        if method == "BYE":
            self.agent.respond(tx, 200, "OK")
            await self.end("caller hung up")
        elif method == "INVITE":
            await self._reinvite(request, tx)
        elif method == "INFO":
            await self._info(request, tx)
        elif method == "NOTIFY":
            self.agent.respond(tx, 200, "OK")
            self._notify.put_nowait(_sipfrag_status(request.body))
        elif method == "OPTIONS":
            self.agent.respond(tx, 200, "OK")
        else:
            self.agent.respond(tx, 405 if method == "REFER" else 501, "Not Allowed in this call")

    def on_ack(self, request: Request) -> None:
        if self._offered is not None and self._offered[0] == request.cseq[0]:
            _, ours = self._offered
            self._offered = None
            try:  # §13.2.2.4: the ACK of a 2xx with an offer carries the answer
                self._apply(accept(ours, parse_sdp(request.body)))
            except SdpError as exc:
                log.warning("call %s: no usable SDP answer in the ACK: %s", self.info.call_id, exc)
                if self.negotiated is None:  # a new call with no media agreed cannot go on
                    self._spawn(self.hangup(f"no SDP answer in the ACK: {exc}"))
                    return
        if self.answered_at is None:
            self.answered_at = time.monotonic()
            if self.app is not None:
                self._spawn(self.app.answered())

    async def _reinvite(self, request: Request, tx: ServerTransaction) -> None:
        if not request.body:  # §14.2: the offer goes in our 2xx (sendrecv, as for a new call: RFC 6337 §5.3)
            session = offer(self.local_address, self.media.local_port, self.codecs)
            self._offered = (request.cseq[0], session)
        else:
            try:
                session, negotiated = answer(parse_sdp(request.body), self.local_address, self.media.local_port,
                                             self.codecs)
            except SdpError as exc:  # the call goes on as it was (§14.2)
                self.agent.respond(tx, 488, "Not Acceptable Here", Warning=f'305 appliance "{exc}"')
                return
            self._apply(negotiated)
        contact = self.agent.contact(self.dialog.remote_target.host, transport=self.dialog.transport)
        response = self.agent.response(tx, 200, "OK", self._describe(session), Contact=contact)
        self.agent.respond_2xx(tx, response)

    def expect_answer(self, cseq: int, ours: Session) -> None:
        """Our offer went in the 2xx to the INVITE numbered ``cseq``: its ACK carries the answer."""
        self._offered = (cseq, ours)

    def _apply(self, negotiated: Negotiated) -> None:
        if self.negotiated is None:
            self.media.start(negotiated)  # a call answered with our offer: media starts with the ACK's answer
        else:
            self.media.update(negotiated)
        self.negotiated = negotiated

    def _describe(self, session: Session) -> bytes:
        """``session`` as our next SDP: the o= line of the last one, its version one higher (RFC 3264 §8)."""
        if self.sdp is not None:
            session.session_id, session.version = self.sdp.session_id, self.sdp.version + 1
        self.sdp = session
        return render(session)

    async def _info(self, request: Request, tx: ServerTransaction) -> None:
        kind = (request.get("Content-Type") or "").lower()
        if kind not in ("application/dtmf-relay", "application/dtmf"):
            self.agent.respond(tx, 415, "Unsupported Media Type", Accept="application/dtmf-relay")
            return
        text = request.body.decode(errors="replace")
        digit = next((line.split("=", 1)[1].strip() for line in text.splitlines()
                      if line.lower().startswith("signal=")), text.strip())
        self.agent.respond(tx, 200, "OK")
        if digit[:1] and digit[:1].upper() in "0123456789*#ABCD":
            self.dtmf(digit[:1].upper())

    # ---- media to the application (the RTP session calls these on the event loop; they must not block)

    def audio(self, samples: np.ndarray) -> None:
        if self.app is not None and not self.ended.done():
            self._audio.put_nowait(samples)

    def dtmf(self, digit: str) -> None:
        if self.app is not None and not self.ended.done():
            self._spawn(self.app.dtmf(digit))

    def run(self, app: CallApp) -> None:
        """Start feeding the caller's audio to ``app`` (in order, off the RTP receive path)."""
        self.app = app
        self._spawn(self._feed(app))

    async def _feed(self, app: CallApp) -> None:
        while True:
            await app.feed(int16_to_float32(await self._audio.get()))

    # ---- ending

    async def end(self, reason: str) -> None:
        if self.ended.done():
            return
        self.ended.set_result(reason)
        self.agent.forget_dialog(self.dialog.id)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.app is not None:
            with contextlib.suppress(Exception):
                await self.app.close()
        await self.media.stop()
        self.on_end(self)
        log.info("call %s ended: %s", self.info.call_id, reason)

    async def acknowledge(self) -> None:
        """Our ACK of the peer's 2xx (calls we placed), then the call is up."""
        request = self._new("ACK")
        destination, transport = await self._next_hop()
        await self.agent.send_ack(request, destination, transport)
        self.on_ack(request)

    def _new(self, method: str) -> Request:
        peer = self.dialog.remote_target.host
        via = self.agent.via(peer, self.dialog.transport)
        return self.dialog.request(method, self.agent.contact(peer, transport=self.dialog.transport), via)

    async def _next_hop(self) -> tuple[tuple[str, int], str]:
        """The first Route if there is a route set, else the peer's Contact (§12.2.1.1)."""
        uri = Address.parse(self.dialog.route_set[0]).uri if self.dialog.route_set else self.dialog.remote_target
        return await self.agent.resolve(uri)

    async def _request(self, method: str, headers: dict[str, str] | None = None) -> Response | None:
        request = self._new(method)
        for name, value in (headers or {}).items():
            request.add(name, value)
        try:
            destination, transport = await self._next_hop()
        except OSError as exc:
            log.warning("cannot reach the peer of call %s for %s: %s", self.info.call_id, method, exc)
            return None
        return await self.agent.send_request(request, destination, transport)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _sipfrag_status(body: bytes) -> int:
    """The status of a message/sipfrag body ("SIP/2.0 200 OK"); 0 when unreadable."""
    first = body.decode(errors="replace").strip().split("\r\n")[0].split()
    return int(first[1]) if len(first) >= 2 and first[0] == "SIP/2.0" and first[1].isdigit() else 0
