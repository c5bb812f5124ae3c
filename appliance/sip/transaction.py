"""SIP transactions (RFC 3261 §17): the four state machines and their timers A to K.

A transaction owns the retransmissions of one request and its responses. Timers are event-loop callbacks
(``call_later``), never tasks, so a transaction that ends leaves nothing running. Over a reliable
transport (TCP) the retransmission timers are off and the absorbing timers (D, I, J, K) are zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from appliance.sip.message import Request, Response, response_to


@dataclass(frozen=True)
class Timers:
    """RFC 3261 Table 4 base values; tests shrink t1 to exercise the timeouts quickly."""

    t1: float = 0.5  # round-trip estimate
    t2: float = 4.0  # longest retransmit interval of non-INVITE requests and INVITE responses
    t4: float = 5.0  # longest a message stays in the network

    @property
    def timeout(self) -> float:  # Timers B, F, H, J: 64·T1
        return 64 * self.t1


Send = Callable[[bytes], None]


class _Transaction:
    def __init__(self, request: Request, send: Send, reliable: bool, timers: Timers,
                 on_terminated: Callable[[_Transaction], None]) -> None:
        self.request, self.send, self.reliable, self.timers = request, send, reliable, timers
        self.on_terminated = on_terminated
        self.state = "trying"
        self._handles: dict[str, asyncio.TimerHandle] = {}

    @property
    def branch(self) -> str:
        return self.request.vias[0].branch or ""

    def _start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._stop(name)
        self._handles[name] = asyncio.get_running_loop().call_later(delay, callback)

    def _stop(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _linger(self, delay: float) -> None:
        """Stay in the completed state for ``delay`` s absorbing retransmissions, then terminate."""
        if delay <= 0:
            self.terminate()
        else:
            self._start("linger", delay, self.terminate)

    def terminate(self) -> None:
        if self.state == "terminated":
            return
        self.state = "terminated"
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self.on_terminated(self)

    def _send(self, message: Request | Response) -> None:
        try:
            self.send(message.encode())
        except (OSError, RuntimeError):
            self._transport_error()

    def _transport_error(self) -> None:
        self.terminate()


class ServerTransaction(_Transaction):
    """INVITE server (§17.2.1: Timers G, H, I; RFC 6026: the Accepted state and Timer L) and non-INVITE server
    (§17.2.2: Timer J) transactions."""

    def __init__(self, request: Request, send: Send, reliable: bool, timers: Timers,
                 on_terminated: Callable[[_Transaction], None]) -> None:
        super().__init__(request, send, reliable, timers, on_terminated)
        self.invite = request.method == "INVITE"
        self.state = "proceeding" if self.invite else "trying"
        self.last: Response | None = None
        self.to_tag: str | None = None  # the tag every response of this transaction carries
        self.on_cancel: Callable[[], None] | None = None  # INVITE: its owner's reaction to a CANCEL
        self.acked = asyncio.get_running_loop().create_future()  # INVITE: the ACK of a non-2xx final arrived
        if self.invite:  # §17.2.1: a 100 Trying at once keeps the client from retransmitting
            self.respond(response_to(request, 100, "Trying"))

    @property
    def final_sent(self) -> bool:
        return self.last is not None and self.last.status >= 200

    def respond(self, response: Response) -> None:
        if self.state in ("accepted", "completed", "confirmed", "terminated"):
            return  # the transaction already answered finally; a late answer is dropped
        self.last = response
        self._send(response)
        if response.status < 200:
            self.state = "proceeding"
        elif self.invite and response.status < 300:
            # RFC 6026 §7.1 (updating §17.2.1): the TU retransmits the 2xx itself (§13.3.1.4); meanwhile the
            # transaction absorbs retransmitted INVITEs (no second call) and matches a late CANCEL, for Timer L
            self.state = "accepted"
            self._start("L", self.timers.timeout, self.terminate)
        elif self.invite:
            self.state = "completed"
            if not self.reliable:
                self._retransmit_after(self.timers.t1)  # Timer G
            self._start("H", self.timers.timeout, self.terminate)  # no ACK came
        else:
            self.state = "completed"
            self._linger(0 if self.reliable else self.timers.timeout)  # Timer J

    def _retransmit_after(self, interval: float) -> None:
        def fire() -> None:
            if self.state == "completed" and self.last is not None:
                self._send(self.last)
                self._retransmit_after(min(2 * interval, self.timers.t2))
        self._start("G", interval, fire)

    def on_retransmission(self) -> None:
        """The same request again: repeat the last response (§17.2.1, §17.2.2)."""
        if self.last is not None and self.state in ("proceeding", "completed"):
            self._send(self.last)

    def on_ack(self) -> None:
        if self.state == "completed":
            self.state = "confirmed"
            self._stop("G")
            self._stop("H")
            if not self.acked.done():
                self.acked.set_result(True)
            self._linger(0 if self.reliable else self.timers.t4)  # Timer I


class ClientTransaction(_Transaction):
    """INVITE client (§17.1.1: Timers A, B, D) and non-INVITE client (§17.1.2: Timers E, F, K) transactions.

    ``final`` resolves with the final response; a timeout resolves it with a 408 and a transport failure with
    a 503 made here (§8.1.3.1), so the caller always gets a response to act on."""

    def __init__(self, request: Request, send: Send, reliable: bool, timers: Timers,
                 on_terminated: Callable[[_Transaction], None],
                 on_provisional: Callable[[Response], None] | None = None) -> None:
        super().__init__(request, send, reliable, timers, on_terminated)
        self.invite = request.method == "INVITE"
        self.state = "calling" if self.invite else "trying"
        self.on_provisional = on_provisional
        self.final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._ack: Request | None = None

    def start(self) -> None:
        self._send(self.request)
        if not self.reliable:
            self._retransmit_after(self.timers.t1)  # Timer A or E
        self._start("timeout", self.timers.timeout, lambda: self._fail(408, "Request Timeout"))  # B or F

    def _retransmit_after(self, interval: float) -> None:
        def fire() -> None:
            if self.state in ("calling", "trying", "proceeding"):
                self._send(self.request)
                if self.invite:  # Timer A doubles without bound (§17.1.1.2)
                    self._retransmit_after(2 * interval)
                else:  # Timer E doubles up to T2, and is T2 once a provisional came (§17.1.2.2)
                    longest = self.timers.t2
                    self._retransmit_after(longest if self.state == "proceeding" else min(2 * interval, longest))
        if self.invite and self.state != "calling":
            return
        self._start("retransmit", interval, fire)

    def on_response(self, response: Response) -> None:
        if response.status < 200:
            if self.state in ("calling", "trying"):
                self.state = "proceeding"
                if self.invite:
                    self._stop("retransmit")  # Timer A stops on a provisional
            if self.on_provisional is not None and self.state == "proceeding":
                self.on_provisional(response)
            return
        if self.state == "completed":
            if self._ack is not None:  # §17.1.1.2: a retransmitted final is ACKed again
                self._send(self._ack)
            return
        if self.state == "terminated":
            return
        self._stop("retransmit")
        self._stop("timeout")
        if not self.final.done():
            self.final.set_result(response)
        if self.invite and response.status < 300:
            self.terminate()  # the TU sends the ACK of a 2xx in its own transaction
            return
        self.state = "completed"
        if self.invite:
            self._ack = ack_for_failure(self.request, response)
            self._send(self._ack)
            self._linger(0 if self.reliable else 32.0)  # Timer D: at least 32 s over UDP
        else:
            self._linger(0 if self.reliable else self.timers.t4)  # Timer K

    def _fail(self, status: int, reason: str) -> None:
        if not self.final.done():
            self.final.set_result(response_to(self.request, status, reason))
        self.terminate()

    def _transport_error(self) -> None:
        self._fail(503, "Service Unavailable (transport error)")


def ack_for_failure(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, part of the INVITE's transaction (§17.1.1.3)."""
    ack = Request(method="ACK", uri=invite.uri)
    ack.add("Via", invite.get_all("Via")[0])
    for name in ("Route",):
        for value in invite.get_all(name):
            ack.add(name, value)
    ack.add("From", invite.get("From") or "")
    ack.add("To", response.get("To") or "")
    ack.add("Call-ID", invite.call_id)
    ack.add("CSeq", f"{invite.cseq[0]} ACK")
    ack.add("Max-Forwards", "70")
    return ack
