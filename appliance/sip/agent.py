"""The user agent core (RFC 3261 §8, §12 to §17): matches messages to transactions and dialogs, answers what
the agent answers itself (OPTIONS, CANCEL, stray in-dialog requests), and sends requests of its own.

Applications register a handler per out-of-dialog method (INVITE, …) and a ``DialogUser`` per dialog; they
answer through the ServerTransaction they are given and never see retransmissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from appliance.sip.dialog import DialogId, new_branch, new_tag
from appliance.sip.message import Request, Response, response_to
from appliance.sip.transaction import ClientTransaction, ServerTransaction, Timers, _Transaction
from appliance.sip.transport import Address, Bound, SipTransport, Source, response_destination
from appliance.sip.uri import SipUri, Via

log = logging.getLogger(__name__)
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REFER, NOTIFY"
SUPPORTED = "replaces"
Handler = Callable[[Request, ServerTransaction, Source], Awaitable[None]]
ServerKey = tuple[str, str, str]


class DialogUser(Protocol):
    async def on_request(self, request: Request, tx: ServerTransaction) -> None: ...
    def on_ack(self, request: Request) -> None: ...


def local_ip_for(peer: str) -> str:
    """The address of the interface that routes to ``peer`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((peer, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class UserAgent:
    def __init__(self, host: str = "0.0.0.0", port: int = 5060, timers: Timers | None = None,
                 user_agent: str = "edge-voice-appliance", advertise: str | None = None,
                 sockets: Bound | None = None) -> None:
        self.timers = timers or Timers()
        self.user_agent = user_agent
        self.advertise = advertise
        self.transport = SipTransport(self.on_message, host, port, sockets)
        self.handlers: dict[str, Handler] = {"OPTIONS": self._options}
        self.dialogs: dict[DialogId, DialogUser] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._awaiting_ack: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._acks_sent: dict[tuple[str, int], tuple[bytes, Source, Address]] = {}

    async def start(self) -> None:
        await self.transport.start()

    async def stop(self) -> None:
        for tx in [*self._servers.values(), *self._clients.values()]:
            tx.terminate()
        for future in self._awaiting_ack.values():
            future.cancel()
        await self.transport.stop()

    @property
    def port(self) -> int:
        return self.transport.port

    def host_for(self, peer: str) -> str:
        return self.advertise or local_ip_for(peer)

    def contact(self, peer: str, user: str = "appliance", transport: str = "UDP") -> str:
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"<sip:{user}@{self.host_for(peer)}:{self.port}{suffix}>"

    def via(self, peer: str, transport: str = "UDP") -> Via:
        return Via(transport, self.host_for(peer), self.port, {"branch": new_branch(), "rport": None})

    # ---- receiving

    async def on_message(self, message: Request | Response, source: Source) -> None:
        if isinstance(message, Response):
            self._on_response(message)
            return
        key = self._server_key(message)
        if message.method == "ACK":
            self._on_ack(message, key)
            return
        existing = self._servers.get(key)
        if existing is not None:
            existing.on_retransmission()
            return
        destination = response_destination(message, source)
        tx = ServerTransaction(message, lambda data: source.send(data, destination), source.transport != "UDP",
                               self.timers, self._forget)
        self._servers[key] = tx
        try:
            await self._dispatch(message, tx, source)
        except Exception:
            log.exception("SIP %s handler failed", message.method)
            if not tx.final_sent:
                self.respond(tx, 500, "Server Internal Error")

    async def _dispatch(self, request: Request, tx: ServerTransaction, source: Source) -> None:
        if request.get("Max-Forwards") == "0":
            self.respond(tx, 483, "Too Many Hops")
            return
        required = [r for r in request.get_all("Require") if r.lower() not in SUPPORTED.split(", ")]
        if required and request.method != "CANCEL":
            self.respond(tx, 420, "Bad Extension", Unsupported=", ".join(required))
            return
        if request.method == "CANCEL":
            self._on_cancel(request, tx)
            return
        if request.to.tag:
            dialog = self.dialogs.get((request.call_id, request.to.tag, request.from_.tag or ""))
            if dialog is None:
                self.respond(tx, 481, "Call/Transaction Does Not Exist")
                return
            await dialog.on_request(request, tx)
            return
        handler = self.handlers.get(request.method)
        if handler is None:
            status, reason = (481, "Call/Transaction Does Not Exist") if request.method in ("BYE", "INFO", "NOTIFY") \
                else (405, "Method Not Allowed") if request.method in ALLOW else (501, "Not Implemented")
            self.respond(tx, status, reason, Allow=ALLOW)
            return
        await handler(request, tx, source)

    def _on_cancel(self, cancel: Request, tx: ServerTransaction) -> None:
        """§9.2: CANCEL finds the INVITE's server transaction; if that has not answered finally, the INVITE
        gets 487 (from its owner's ``on_cancel`` when set)."""
        key = self._server_key(cancel)
        invite = self._servers.get((key[0], key[1], "INVITE"))
        if invite is None:
            self.respond(tx, 481, "Call/Transaction Does Not Exist")
            return
        tx.to_tag = invite.to_tag = invite.to_tag or new_tag()  # the same To tag as the INVITE's answers (§9.2)
        self.respond(tx, 200, "OK")
        if not invite.final_sent:
            if invite.on_cancel is not None:
                invite.on_cancel()
            self.respond(invite, 487, "Request Terminated")

    def _on_ack(self, ack: Request, key: ServerKey) -> None:
        invite = self._servers.get(key)
        # the ACK of a non-2xx final is part of the INVITE transaction; that of a 2xx goes on (RFC 6026 §7.1)
        if invite is not None and invite.state != "accepted":
            invite.on_ack()
            return
        waiting = self._awaiting_ack.pop((ack.call_id, ack.cseq[0]), None)
        if waiting is not None and not waiting.done():
            waiting.set_result(True)
        dialog = self.dialogs.get((ack.call_id, ack.to.tag or "", ack.from_.tag or ""))
        if dialog is not None:
            dialog.on_ack(ack)

    def _on_response(self, response: Response) -> None:
        vias = response.vias
        key = (vias[0].branch or "", response.cseq[1])
        tx = self._clients.get(key)
        if tx is not None:
            tx.on_response(response)
            return
        sent = self._acks_sent.get((response.call_id, response.cseq[0]))
        if sent is not None and response.cseq[1] == "INVITE" and 200 <= response.status < 300:
            data, source, addr = sent  # §13.2.2.4: a retransmitted 2xx is ACKed again
            with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                source.send(data, addr)

    # ---- answering

    def response(self, tx: ServerTransaction, status: int, reason: str, body: bytes = b"",
                 content_type: str | None = None, **headers: str) -> Response:
        """A response to the transaction's request; the To tag is the same on all but 100 (§8.2.6.2)."""
        to_tag = None
        if status > 100 and not tx.request.to.tag:
            tx.to_tag = to_tag = tx.to_tag or new_tag()
        response = response_to(tx.request, status, reason, to_tag=to_tag)
        for name, value in headers.items():
            response.add(name.replace("_", "-"), value)
        response.add("Server", self.user_agent)
        if body:
            response.add("Content-Type", content_type or "application/sdp")
            response.body = body
        return response

    def respond(self, tx: ServerTransaction, status: int, reason: str, body: bytes = b"",
                content_type: str | None = None, **headers: str) -> Response:
        response = self.response(tx, status, reason, body, content_type, **headers)
        tx.respond(response)
        return response

    def respond_2xx(self, tx: ServerTransaction, response: Response) -> asyncio.Future[bool]:
        """Send a 2xx to an INVITE and retransmit it until its ACK (§13.3.1.4); the future tells whether the
        ACK came within 64·T1."""
        key = (tx.request.call_id, tx.request.cseq[0])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._awaiting_ack[key] = future
        send = tx.send
        tx.respond(response)
        data = response.encode()
        started = loop.time()

        def again(interval: float) -> None:
            if future.done():
                return
            if loop.time() - started >= self.timers.timeout:
                self._awaiting_ack.pop(key, None)
                future.set_result(False)
                return
            if not tx.reliable:
                with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                    send(data)
            loop.call_later(interval, again, min(2 * interval, self.timers.t2))

        loop.call_later(self.timers.t1, again, min(2 * self.timers.t1, self.timers.t2))
        return future

    async def _options(self, request: Request, tx: ServerTransaction, source: Source) -> None:
        self.respond(tx, 200, "OK", Allow=ALLOW, Accept="application/sdp", Supported=SUPPORTED)

    # ---- sending

    async def resolve(self, uri: SipUri) -> tuple[Address, str]:
        """Where a request to ``uri`` goes (address, UDP/TCP); names by the system resolver (no SRV lookup)."""
        transport = "TCP" if (uri.params.get("transport") or "").lower() == "tcp" else "UDP"
        port = uri.port or 5060
        if uri.host.startswith("["):
            return (uri.host.strip("[]"), port), transport
        infos = await asyncio.get_running_loop().getaddrinfo(uri.host, port, type=socket.SOCK_DGRAM)
        return (str(infos[0][4][0]), port), transport

    async def route(self, destination: Address, transport: str) -> Source:
        if transport == "TCP":
            return await self.transport.connect(destination)
        return self.transport.udp_source(destination)

    async def send_request(self, request: Request, destination: Address, transport: str = "UDP",
                           on_provisional: Callable[[Response], None] | None = None) -> Response:
        """Send ``request`` in a client transaction and return its final response (408 on timeout, 503 when
        the transport fails)."""
        try:
            source = await self.route(destination, transport)
        except (TimeoutError, OSError) as exc:
            return response_to(request, 503, f"Service Unavailable ({exc.__class__.__name__})")
        tx = ClientTransaction(request, lambda data: source.send(data, destination), transport != "UDP",
                               self.timers, self._forget, on_provisional)
        self._clients[(tx.branch, request.method)] = tx
        tx.start()
        return await tx.final

    async def send_ack(self, ack: Request, destination: Address, transport: str = "UDP") -> None:
        """The ACK of a 2xx: sent outside any transaction, and again for each retransmitted 2xx."""
        source = await self.route(destination, transport)
        data = ack.encode()
        source.send(data, destination)
        self._acks_sent[(ack.call_id, ack.cseq[0])] = (data, source, destination)

    def forget_dialog(self, dialog_id: DialogId) -> None:
        self.dialogs.pop(dialog_id, None)
        for key in [k for k in self._acks_sent if k[0] == dialog_id[0]]:
            del self._acks_sent[key]

    # ---- bookkeeping

    def _forget(self, tx: _Transaction) -> None:
        if isinstance(tx, ServerTransaction):
            key = self._server_key(tx.request)
            if self._servers.get(key) is tx:
                del self._servers[key]
        else:
            self._clients.pop((tx.branch, tx.request.method), None)

    @staticmethod
    def _server_key(request: Request) -> ServerKey:
        via = request.vias[0]
        method = "INVITE" if request.method == "ACK" else request.method
        branch = via.branch if via.branch and via.branch.startswith("z9hG4bK") else \
            f"{request.call_id}/{request.cseq[0]}/{request.from_.tag}"  # RFC 2543 peers (§17.2.3)
        return branch, f"{via.host}:{via.port or 5060}", method
