"""The API app served by uvicorn on a thread of this process: for benchmarks and tests that drive it with
real clients over loopback."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from appliance.api.app import create_app
from appliance.api.context import ApiServices
from appliance.errors import ApplianceError


class ThreadedServer:
    """The API app served by uvicorn in a thread (the benchmark, tests). Entering waits until /health says the
    models are ready, or, with ``warm=False``, only until the server answers."""

    def __init__(self, services: ApiServices, host: str = "127.0.0.1", ready_timeout_s: float = 60,
                 warm: bool = True) -> None:
        with socket.socket() as sock:
            sock.bind((host, 0))
            self.port = sock.getsockname()[1]
        self.host = host
        self.ready_timeout_s, self.warm = ready_timeout_s, warm
        self.server = uvicorn.Server(uvicorn.Config(create_app(services), host=host, port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="api-server")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                health = httpx.get(self.url + "/health", timeout=1).json()
                if health["ready"] or not self.warm:
                    return self
                if health["error"]:
                    raise ApplianceError(f"the API could not load its models: {health['error']}")
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise ApplianceError(f"the API did not become ready within {self.ready_timeout_s:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
