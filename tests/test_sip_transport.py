"""The SIP transport and server transactions with real peers on loopback: SIPp asking OPTIONS over UDP and TCP,
before and after a fuzz run of malformed datagrams; retransmissions absorbed; 400 where the RFC says."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
from pathlib import Path

import pytest

from appliance.sip.agent import UserAgent
from appliance.sip.message import Response, parse

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "fixtures" / "sip"
OPTIONS = (b"OPTIONS sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
           b"From: <sip:tester@127.0.0.1>;tag=77\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: {branch}@tester\r\n"
           b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


async def serve() -> UserAgent:
    agent = UserAgent("127.0.0.1", 0)
    await agent.start()
    return agent


async def sipp(port: int, transport: str = "u1", calls: int = 5) -> int:
    assert SIPP, "sipp comes from Debian's sip-tester (make test installs it)"
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(SCENARIOS / "options.xml"), "-m", str(calls), "-r", "20", "-t", transport,
        "-i", "127.0.0.1", "-p", "0", "-timeout", "20s", "-timeout_error", "-nostdin", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode is not None
    if proc.returncode:
        print(err.decode(errors="replace")[-2000:])
    return proc.returncode


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def replies(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    await asyncio.sleep(wait)
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def options(sock: socket.socket, branch: str) -> bytes:
    port = sock.getsockname()[1]
    return OPTIONS.replace(b"{port}", str(port).encode()).replace(b"{branch}", branch.encode())


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(4)
        if op == 0:
            del out[at:at + rng.randint(1, 30)]
        elif op == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        elif op == 2 and at < len(out):
            out[at] = rng.choice(b"\r\n:;<> \x00\xff")
        else:
            out = out.replace(rng.choice([b"CSeq: 1", b"Content-Length: 0", b"Call-ID", b"SIP/2.0", b"Via"]),
                              rng.choice([b"CSeq: x", b"Content-Length: 99", b"", b"SIP/9.9", b"V i a"]), 1)
    return bytes(out)


@pytest.mark.skipif(SIPP is None, reason="needs sipp (Debian sip-tester, installed by make test)")
def test_sipp_options_then_fuzz_then_options_again() -> None:
    async def scenario() -> None:
        agent = await serve()
        transport = agent.transport
        try:
            assert await sipp(transport.port, "u1") == 0
            assert await sipp(transport.port, "t1") == 0  # TCP, framed by Content-Length
            sock = client()
            rng = random.Random(5060)
            for i in range(1200):
                sock.sendto(mutate(rng, options(sock, f"f{i}")), ("127.0.0.1", transport.port))
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
            answers = await replies(sock, 1.0)  # a 400 copies the request's (possibly broken) headers
            assert all(a.startswith((b"SIP/2.0 200 ", b"SIP/2.0 400 ", b"SIP/2.0 501 ")) for a in answers)
            assert any(a.startswith(b"SIP/2.0 400 Bad Request - ") for a in answers)
            assert transport.stats.malformed > 500
            sock.close()
            assert await sipp(transport.port, "u1", calls=10) == 0  # still answering
        finally:
            await agent.stop()

    asyncio.run(scenario())


def test_retransmission_gets_the_same_answer_once_handled() -> None:
    async def scenario() -> None:
        agent = await serve()
        transport = agent.transport
        calls = []
        original = agent.handlers["OPTIONS"]

        async def counting(request, tx, source):  # type: ignore[no-untyped-def]
            calls.append(request)
            await original(request, tx, source)

        agent.handlers["OPTIONS"] = counting
        sock = client()
        try:
            request = options(sock, "retrans1")
            sock.sendto(request, ("127.0.0.1", transport.port))
            first = await replies(sock)
            sock.sendto(request, ("127.0.0.1", transport.port))
            second = await replies(sock)
            assert len(first) == len(second) == 1 and first == second and len(calls) == 1
            response = parse(first[0])
            assert isinstance(response, Response) and response.status == 200 and response.to.tag
            assert "INVITE" in (response.get("Allow") or "")
            via = response.vias[0]
            assert via.params["received"] == "127.0.0.1" and via.params["rport"] == str(sock.getsockname()[1])
            sock.sendto(request.replace(b"OPTIONS sip", b"PUBLISH sip").replace(b"1 OPTIONS", b"1 PUBLISH"),
                        ("127.0.0.1", transport.port))
            unknown = parse((await replies(sock))[0])
            assert isinstance(unknown, Response) and unknown.status == 501
        finally:
            sock.close()
            await agent.stop()

    asyncio.run(scenario())
