"""SIP transports (RFC 3261 §18): UDP datagrams and TCP streams framed by Content-Length.

Every received message goes to one handler. A malformed request that can be answered gets a 400 (§8.2.6,
§21.4.1); anything else malformed is dropped and counted, never raised. Responses to requests are routed
by the top Via as §18.2.2 and RFC 3581 (rport) say: back to the source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from appliance.sip.message import MAX_MESSAGE, Message, Request, Response, SipParseError, bad_request, parse
from appliance.sip.uri import split_commas

log = logging.getLogger(__name__)
Address = tuple[str, int]
Bound = tuple[socket.socket, socket.socket]  # a UDP socket and a listening TCP one, on the same address
Handler = Callable[[Request | Response, "Source"], Awaitable[None]]


@dataclass
class Stats:
    received: int = 0
    malformed: int = 0
    answered_400: int = 0


@dataclass
class Source:
    """Where a message came from, and how to send back on the same transport."""

    transport: str  # UDP or TCP
    addr: Address
    send: Callable[[bytes, Address], None] = field(repr=False)


def stamp_via(request: Request, source: Source) -> None:
    """Add received/rport to the top Via (RFC 3261 §18.2.1, RFC 3581) so responses find their way back."""
    index = next((i for i, (k, _) in enumerate(request.headers) if k == "Via"), None)
    if index is None:
        return
    first, *others = split_commas(request.headers[index][1])
    if "received=" not in first:
        first += f";received={source.addr[0]}"
    first = re.sub(r";rport(?=;|$)", f";rport={source.addr[1]}", first, count=1)
    request.headers[index] = ("Via", ", ".join([first, *others]))


def response_destination(message: Message, source: Source) -> Address:
    """Where responses to a request go (RFC 3261 §18.2.2 with RFC 3581): TCP and rport answer the source; UDP
    otherwise the top Via's port. ``message`` is the request or a response to it (they share the Via)."""
    via = message.vias[0] if message.get("Via") else None
    if source.transport == "TCP" or via is None or "rport" in via.params:
        return source.addr
    return source.addr[0], via.port or 5060


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():  # keep-alive (RFC 5626 §3.5.1)
            return
        udp = self.transport
        assert udp is not None
        self.owner.deliver(data, Source("UDP", (addr[0], addr[1]), lambda d, a: udp.sendto(d, a)), stream=False)


class SipTransport:
    """Listens on UDP and TCP at one address and hands every good message to ``handler``."""

    def __init__(self, handler: Handler, host: str = "0.0.0.0", port: int = 5060,
                 sockets: Bound | None = None) -> None:
        """``sockets``: a UDP socket and a listening TCP socket already bound to host:port (socket activation)."""
        self.handler = handler
        self.host, self.port = host, port
        self.sockets = sockets
        self.stats = Stats()
        self._udp: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[Address, Source] = {}  # TCP connections by peer address, ours or theirs

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sockets is not None:  # each is closed with its server: the caller passes duplicates
            udp_sock, tcp_sock = self.sockets
            udp, self._udp = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)
            self._tcp = await asyncio.start_server(self._stream, sock=tcp_sock)
            return
        udp, self._udp = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
        self.port = udp.get_extra_info("sockname")[1]  # port 0: the one the system chose
        self._tcp = await asyncio.start_server(self._stream, self.host, self.port)

    def send_udp(self, data: bytes, addr: Address) -> None:
        if self._udp is None or self._udp.transport is None:
            raise RuntimeError("transport not started")
        self._udp.transport.sendto(data, addr)

    async def connect(self, addr: Address) -> Source:
        """A TCP connection to ``addr`` (reused while open); what arrives on it is delivered like the rest."""
        if addr in self._streams:
            return self._streams[addr]
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1]), 5)
        source = self._stream_source(writer)
        self._streams[addr] = source
        self._spawn(self._read_stream(reader, writer, source))
        return source

    def udp_source(self, addr: Address) -> Source:
        return Source("UDP", addr, lambda d, a: self.send_udp(d, a))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def deliver(self, data: bytes, source: Source, stream: bool) -> None:
        self.stats.received += 1
        try:
            message = parse(data, stream=stream)
        except SipParseError as exc:
            self.stats.malformed += 1
            if exc.request is not None and exc.request.method != "ACK":
                self.stats.answered_400 += 1
                response = bad_request(exc.request, exc.reason)
                with contextlib.suppress(Exception):  # the Via itself may be unusable: then there is no way back
                    source.send(response.encode(), response_destination(response, source))
            log.debug("dropped malformed SIP from %s: %s", source.addr, exc.reason)
            return
        if isinstance(message, Request):
            stamp_via(message, source)
        self._spawn(self._handle(message, source))

    async def _handle(self, message: Request | Response, source: Source) -> None:
        try:
            await self.handler(message, source)
        except Exception:  # a handler's bug must not take the transport down
            log.exception("SIP handler failed on %s from %s", _describe(message), source.addr)

    def _stream_source(self, writer: asyncio.StreamWriter) -> Source:
        peer = writer.get_extra_info("peername")

        def send(data: bytes, _: Address) -> None:
            if writer.is_closing():
                raise ConnectionError("the TCP connection is closed")
            writer.write(data)
        return Source("TCP", (peer[0], peer[1]), send)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = self._stream_source(writer)
        self._streams[source.addr] = source
        await self._read_stream(reader, writer, source)

    async def _read_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: Source) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                head = head.lstrip(b"\r\n")  # CRLF keep-alives between messages
                if not head.strip():
                    continue
                length = _content_length(head)
                if length is None or length > MAX_MESSAGE:
                    self.stats.malformed += 1
                    break  # framing is lost: the stream cannot be resynchronised
                body = await reader.readexactly(length) if length else b""
                self.deliver(head + body, source, stream=True)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            if self._streams.get(source.addr) is source:
                del self._streams[source.addr]
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None


def _describe(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else f"{message.status} response"
