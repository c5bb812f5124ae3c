"""The Wyoming STT and TTS servers, started and stopped together on the caller's event loop.

`WyomingServers` claims no signal (the wyoming library's `run()` takes SIGTERM for each server; we use its
`start()`/`stop()` instead), so it lives on the supervisor's loop next to the API and the phone (`appliance
wyoming` is `appliance run --only wyoming`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import Any

from wyoming.server import AsyncServer, AsyncTcpServer, HandlerFactory

from appliance.wyoming.handlers import StackSource, SttHandler, TtsHandler


class _Passed(AsyncTcpServer):
    """A Wyoming TCP server on a socket that is already listening (socket activation)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(*sock.getsockname()[:2])
        self.sock = sock

    async def start(self, handler_factory: HandlerFactory) -> None:
        callback = functools.partial(self._handler_callback, handler_factory)
        self._server = await asyncio.start_server(callback, sock=self.sock)
        await self._server.start_serving()


class WyomingServers:
    def __init__(self, stack: StackSource, stt_uri: str, tts_uri: str, allow: list[str],
                 sockets: dict[str, socket.socket] | None = None) -> None:
        """``sockets``: listening sockets already bound, by URI (socket activation); the rest are bound here."""
        self.stack, self.uris, self.allow = stack, (stt_uri, tts_uri), allow
        self.passed = sockets or {}
        self.sessions: set[Any] = set()
        self._servers: list[AsyncServer] = []

    async def start(self) -> None:
        """Listen on both URIs (OSError when an address is taken: nothing is left listening then)."""
        try:
            for uri, handler in zip(self.uris, (SttHandler, TtsHandler), strict=True):
                server = _Passed(self.passed[uri]) if uri in self.passed else AsyncServer.from_uri(uri)
                await server.start(functools.partial(handler, stack=self.stack, allow=self.allow,
                                                     sessions=self.sessions))
                self._servers.append(server)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop listening and end the open sessions."""
        servers, self._servers = self._servers, []
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop()
