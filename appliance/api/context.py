"""What the API's routes share, wired once by the entry point: `ApiServices` (keys, the voice models' readiness,
the phone, metrics, WebRTC sessions), and `services_of` to reach it from a request or a WebSocket.

Routers import this module and `appliance.api.auth`, never `appliance.api.app`, which imports the routers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.requests import HTTPConnection

from appliance.api.keys import KeyStore
from appliance.api.limits import RateLimiter, error_body
from appliance.config.settings import ApiSettings
from appliance.runtime.routes import Routes
from appliance.sip.service import SipService
from appliance.voice.readiness import ModelsNotReady, VoiceModels
from appliance.voice.stack import VoiceStack
from appliance.webrtc.hub import WebRtcHub


@dataclass
class ApiServices:
    """What the routes need, wired once by the entry point."""

    settings: ApiSettings
    keys: KeyStore
    models: VoiceModels  # the voice stack and whether it is warm
    provisioned: Callable[[], list[str]]  # model ids in the store
    sip: SipService | None = None  # the phone, when this process answers calls
    standalone: bool = True  # the app's lifespan warms the models and stops the stack (not under the supervisor)
    supervisor: Callable[[], dict[str, Any]] | None = None  # the supervisor's status, shown by /health
    routes: Routes | None = None  # the device's upstream routes: their breakers in /health, counters in /metrics
    limiter: RateLimiter = field(init=False)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_per_minute)
        self.requests = Counter("appliance_http_requests", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("appliance_http_request_seconds", "HTTP request time", ["route"],
                                 registry=self.registry)
        self.sessions = Gauge("appliance_stream_sessions", "Open realtime sessions", registry=self.registry)
        self.webrtc = WebRtcHub(self.settings.max_sessions)
        Gauge("appliance_webrtc_sessions", "Open WebRTC sessions", registry=self.registry).set_function(
            lambda: len(self.webrtc.sessions))
        self.loop_tasks = Gauge("appliance_event_loop_tasks", "Tasks alive on the server's event loop",
                                registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.audio_seconds = Counter("appliance_audio_seconds", "Seconds of audio processed", ["task"],
                                     registry=self.registry)

    def ready_stack(self) -> VoiceStack:
        """The warm stack, or a 503 saying why there is none (with Retry-After while the models load)."""
        try:
            return self.models.require()
        except ModelsNotReady as exc:
            code = "warming" if exc.retry_after_s else "models_unavailable"
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
            raise HTTPException(503, error_body(str(exc), "server_error", code), headers=headers) from None


def services_of(connection: HTTPConnection) -> ApiServices:
    """The services of the app serving this request or WebSocket."""
    services: ApiServices = connection.app.state.services
    return services
