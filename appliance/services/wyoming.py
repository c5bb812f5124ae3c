"""The Wyoming speech-to-text and text-to-speech servers as a supervised service, on the shared voice models."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from appliance.supervisor.activation import Activation
from appliance.supervisor.service import TaskService

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.voice.readiness import VoiceModels
    from appliance.wyoming.server import WyomingServers


class WyomingTask(TaskService):
    """The Wyoming STT and TTS servers on the shared stack (one copy of the models for every service)."""

    def __init__(self, settings: Settings, models: VoiceModels, activation: Activation | None = None) -> None:
        super().__init__("wyoming")
        self.settings, self.models = settings, models
        self.activation = activation or Activation()
        self.servers: WyomingServers | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        from appliance.wyoming.server import WyomingServers

        conf = self.settings.wyoming
        self._stop.clear()
        self.servers = WyomingServers(self.models.wait, conf.stt_uri, conf.tts_uri, conf.allow, self._passed())
        await self.servers.start()
        self.set_ready()
        try:
            await self._stop.wait()
        finally:
            await self.servers.stop()

    def _passed(self) -> dict[str, socket.socket]:
        """The TCP URIs whose sockets systemd passed."""
        out = {}
        for uri in (self.settings.wyoming.stt_uri, self.settings.wyoming.tts_uri):
            parts = urlparse(uri)
            sock = self.activation.stream(parts.hostname or "", parts.port or 0) if parts.scheme == "tcp" else None
            if sock is not None:
                out[uri] = sock
        return out

    async def shutdown(self) -> None:
        self._stop.set()

    def live(self) -> int:
        return len(self.servers.sessions) if self.servers is not None else 0

    def health(self) -> dict[str, Any]:
        conf = self.settings.wyoming
        return {"listen": f"{conf.stt_uri} (STT), {conf.tts_uri} (TTS)", "sessions": self.live()}
