"""The server side of the user agent: non-INVITE server transactions (RFC 3261 §17.2.2) and the methods the
appliance answers itself (OPTIONS, §11). Retransmitted requests get the same response again, from the
transaction, without reaching the handler twice."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

from appliance.sip.message import Request, Response, response_to
from appliance.sip.transport import SipTransport, Source, response_destination

T1 = 0.5
TIMER_J = 64 * T1  # how long a UDP server transaction absorbs retransmissions
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REFER, NOTIFY"
RequestHandler = Callable[[Request, Source], Awaitable[Response | None]]


class UserAgentServer:
    def __init__(self, user_agent: str = "edge-voice-appliance") -> None:
        self.user_agent = user_agent
        self.handlers: dict[str, RequestHandler] = {"OPTIONS": self._options}
        self._transactions: dict[tuple[str, str, str], tuple[float, Response | None]] = {}
        self.transport: SipTransport | None = None

    async def on_message(self, message: Request | Response, source: Source) -> None:
        if not isinstance(message, Request):
            return  # responses belong to client transactions (not here yet)
        key = self._key(message)
        now = time.monotonic()
        self._expire(now)
        if key in self._transactions:  # a retransmission: answer again, or stay quiet until answered
            _, cached = self._transactions[key]
            if cached is not None:
                self._send(cached, source)
            return
        if message.method == "ACK":
            return
        self._transactions[key] = (now, None)
        handler = self.handlers.get(message.method)
        if handler is None:
            response = response_to(message, 501, "Not Implemented", to_tag=self._tag(message))
            response.add("Allow", ALLOW)
        else:
            response = await handler(message, source) or response_to(message, 500, "Server Internal Error")
        self._finish(key, response, source, now)

    def _finish(self, key: tuple[str, str, str], response: Response, source: Source, now: float) -> None:
        response.add("Server", self.user_agent)
        linger = TIMER_J if source.transport == "UDP" else 0.0
        self._transactions[key] = (now + linger, response)
        self._send(response, source)

    async def _options(self, request: Request, source: Source) -> Response:
        response = response_to(request, 200, "OK", to_tag=self._tag(request))
        response.add("Allow", ALLOW)
        response.add("Accept", "application/sdp")
        response.add("Supported", "replaces, timer")
        return response

    def _send(self, response: Response, source: Source) -> None:
        source.send(response.encode(), response_destination(response, source))

    def _expire(self, now: float) -> None:
        for key, (until, response) in list(self._transactions.items()):
            if response is not None and until < now:
                del self._transactions[key]

    @staticmethod
    def _key(request: Request) -> tuple[str, str, str]:
        via = request.vias[0]
        method = "INVITE" if request.method == "ACK" else request.method
        return via.branch or request.call_id + str(request.cseq[0]), f"{via.host}:{via.port}", method

    @staticmethod
    def _tag(request: Request) -> str | None:
        return None if request.to.tag else secrets.token_hex(6)


async def serve(host: str, port: int) -> tuple[SipTransport, UserAgentServer]:
    uas = UserAgentServer()
    transport = SipTransport(uas.on_message, host, port)
    uas.transport = transport
    await transport.start()
    return transport, uas


