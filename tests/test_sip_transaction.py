"""Transactions and the agent core on real UDP sockets with shortened timers: retransmission schedules
(A, E, G), timeouts (B, F, H), ACK absorption, CANCEL, and the answers the agent gives by itself."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

from appliance.sip.agent import UserAgent
from appliance.sip.message import Request, Response, parse, response_to
from appliance.sip.transaction import ClientTransaction, ServerTransaction, Timers
from appliance.sip.uri import SipUri

FAST = Timers(t1=0.02, t2=0.08, t4=0.1)


def request(method: str, branch: str, port: int, to_tag: str = "", body: bytes = b"") -> bytes:
    to = "<sip:bot@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    cseq_method = "INVITE" if method == "ACK" else method
    head = (f"{method} sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
            f"From: <sip:tester@127.0.0.1>;tag=t1\r\nTo: {to}\r\nCall-ID: {branch}@tester\r\n"
            f"CSeq: 1 {cseq_method}\r\nMax-Forwards: 70\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Peer:
    """A bare UDP socket playing the other side."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def collect(self, seconds: float) -> list[Response]:
        out: list[Response] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                message = parse(self.sock.recv(65535))
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            assert isinstance(message, Response)
            out.append(message)
        return out


def test_client_transactions_retransmit_on_schedule_then_time_out() -> None:
    async def scenario() -> None:
        sent: list[float] = []
        ended: list[object] = []
        for method, first_gaps in (("INVITE", [0.02, 0.04, 0.08, 0.16]), ("OPTIONS", [0.02, 0.04, 0.08, 0.08])):
            sent.clear()
            req = Request(method=method, uri=SipUri("sip", "127.0.0.1", "bot"))
            for name, value in (("Via", "SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx"), ("From", "<sip:a@b>;tag=1"),
                                ("To", "<sip:bot@127.0.0.1>"), ("Call-ID", "c"), ("CSeq", f"1 {method}")):
                req.add(name, value)
            tx = ClientTransaction(req, lambda data: sent.append(time.monotonic()), False, FAST, ended.append)
            tx.start()
            final = await asyncio.wait_for(tx.final, 3)
            assert final.status == 408 and tx.state == "terminated"
            gaps = [b - a for a, b in itertools.pairwise(sent)][:4]
            for gap, expected in zip(gaps, first_gaps, strict=True):  # A doubles; E doubles up to T2
                assert expected * 0.8 < gap < expected + 0.05, (method, gaps)
            assert 64 * FAST.t1 <= sent[-1] - sent[0] + 0.2
        assert len(ended) == 2

    asyncio.run(scenario())


def test_invite_server_repeats_its_failure_until_the_ack() -> None:
    async def scenario() -> None:
        sent: list[bytes] = []
        invite = parse(request("INVITE", "g1", 5))
        assert isinstance(invite, Request)
        tx = ServerTransaction(invite, sent.append, False, FAST, lambda t: None)
        assert sent[0].startswith(b"SIP/2.0 100 ")
        tx.respond(response_to(invite, 486, "Busy Here", to_tag="x"))
        await asyncio.sleep(0.2)
        repeats = len(sent) - 1
        assert repeats >= 3 and all(s.startswith(b"SIP/2.0 486") for s in sent[1:])  # Timer G
        tx.on_ack()
        assert tx.state == "confirmed" and tx.acked.done()
        await asyncio.sleep(0.1)
        assert len(sent) - 1 == repeats  # the ACK stopped them
        await asyncio.sleep(FAST.t4)
        assert tx.state == "terminated"  # Timer I

    asyncio.run(scenario())


def test_agent_cancel_retransmission_and_stray_requests() -> None:
    async def scenario() -> None:
        agent = UserAgent("127.0.0.1", 0, FAST)
        cancelled = asyncio.Event()

        async def ringing(req: Request, tx: ServerTransaction, source: object) -> None:
            tx.on_cancel = cancelled.set
            agent.respond(tx, 180, "Ringing")
            await cancelled.wait()

        agent.handlers["INVITE"] = ringing
        await agent.start()
        peer = Peer()
        to = ("127.0.0.1", agent.port)
        try:
            peer.sock.sendto(request("INVITE", "c1", peer.port), to)
            first = await peer.collect(0.15)
            assert [r.status for r in first] == [100, 180]
            peer.sock.sendto(request("INVITE", "c1", peer.port), to)  # a retransmission: the last answer again
            assert [r.status for r in await peer.collect(0.1)] == [180]
            peer.sock.sendto(request("CANCEL", "c1", peer.port).replace(b"1 INVITE", b"1 CANCEL"), to)
            answers = await peer.collect(0.15)
            assert sorted(r.status for r in answers[:2]) == [200, 487] and cancelled.is_set()
            assert {r.to.tag for r in answers if r.status == 487} == {first[1].to.tag}  # one tag per transaction
            peer.sock.sendto(request("ACK", "c1", peer.port, to_tag=first[1].to.tag or ""), to)
            await asyncio.sleep(0.05)
            assert [r.status for r in await peer.collect(0.2)] == []  # the ACK stopped the 487's repeats
            peer.sock.sendto(request("BYE", "b2", peer.port, to_tag="nope"), to)
            peer.sock.sendto(request("CANCEL", "none", peer.port).replace(b"1 INVITE", b"1 CANCEL"), to)
            bad = (request("OPTIONS", "m0", peer.port).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
            peer.sock.sendto(bad, to)
            unknown = request("OPTIONS", "r1", peer.port).replace(b"Max-Forwards", b"Require: 100rel\r\nMax-Forwards")
            peer.sock.sendto(unknown, to)
            statuses = sorted(r.status for r in await peer.collect(0.2))
            assert statuses == [420, 481, 481, 483]
        finally:
            peer.sock.close()
            await agent.stop()

    asyncio.run(scenario())
