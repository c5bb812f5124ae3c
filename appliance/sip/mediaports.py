"""The UDP side of a call's media: the port range, a socket endpoint, and binding an RTP/RTCP pair."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)
Address = tuple[str, int]


class MediaError(ApplianceError):
    """The call's media cannot do what was asked (no free port, no DTMF negotiated, stopped)."""


@dataclass(frozen=True)
class PortRange:
    """UDP ports for media, inclusive; RTP takes an even port and RTCP the odd one above it."""

    first: int = 10000
    last: int = 20000

    def __post_init__(self) -> None:
        if not 1 <= self.first < self.last <= 65535 or self.first + self.first % 2 + 1 > self.last:
            raise MediaError(f"media port range {self.first}-{self.last} holds no even/odd port pair")

    def candidates(self) -> list[int]:
        """Every even RTP port of the range, from a random one on (so concurrent calls rarely collide)."""
        ports = list(range(self.first + self.first % 2, self.last, 2))
        start = random.randrange(len(ports))
        return ports[start:] + ports[:start]


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket of a call's media; ``receive`` gets each datagram with its source address."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.receive: Callable[[bytes, Address], None] = lambda data, addr: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.receive(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("media socket error: %s", exc)

    def send(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


async def bind_pair(host: str, ports: PortRange) -> tuple[Endpoint, Endpoint, int]:
    """An even RTP port and the RTCP port above it, bound on ``host`` (from a random place in the range)."""
    loop = asyncio.get_running_loop()
    for port in ports.candidates():
        bound: list[Endpoint] = []
        try:
            for p in (port, port + 1):
                bound.append((await loop.create_datagram_endpoint(Endpoint, local_addr=(host, p)))[1])
            return bound[0], bound[1], port
        except OSError as exc:
            for endpoint in bound:
                assert endpoint.transport is not None
                endpoint.transport.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise MediaError(f"cannot bind media ports on {host}: {exc}") from exc
    raise MediaError(f"no free RTP/RTCP port pair in {ports.first}-{ports.last} on {host}: too many calls, "
                     "or other programs use these ports; widen the media port range")
