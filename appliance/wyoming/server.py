"""The Wyoming STT and TTS servers, started and stopped together on the caller's event loop.

`WyomingServers` claims no signal (the wyoming library's `run()` takes SIGTERM for each server; we use its
`start()`/`stop()` instead), so it lives on the supervisor's loop next to the API and the phone (`appliance
wyoming` is `appliance run --only wyoming`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from wyoming.server import AsyncServer

from appliance.wyoming.handlers import StackSource, SttHandler, TtsHandler


class WyomingServers:
    def __init__(self, stack: StackSource, stt_uri: str, tts_uri: str, allow: list[str]) -> None:
        self.stack, self.uris, self.allow = stack, (stt_uri, tts_uri), allow
        self.sessions: set[Any] = set()
        self._servers: list[AsyncServer] = []

    async def start(self) -> None:
        """Listen on both URIs (OSError when an address is taken: nothing is left listening then)."""
        try:
            for uri, handler in zip(self.uris, (SttHandler, TtsHandler), strict=True):
                server = AsyncServer.from_uri(uri)
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
