"""The fleet console served by uvicorn on a thread over loopback, for tests that drive it with real clients
(Chromium, device agents over HTTP)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from appliance.console import accounts
from appliance.console.app import make_app
from appliance.console.authority import load_or_make
from appliance.console.db import open_database, transaction

PASSWORD = "correct horse battery"


class Console:
    """A console with one user per role (named after the role, password ``PASSWORD``)."""

    def __init__(self, state: Path, tick_s: float = 1.0) -> None:
        self.sessions = open_database(f"sqlite:///{state / 'console.db'}")
        with transaction(self.sessions) as session:
            for role in accounts.ROLES:
                accounts.add_user(session, role, role, PASSWORD)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = make_app(self.sessions, load_or_make(state), tick_s=tick_s)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="console")

    def token(self, name: str) -> dict[str, str]:
        reply = httpx.post(f"{self.url}/api/v1/login", json={"name": name, "password": PASSWORD}, timeout=10)
        reply.raise_for_status()
        return {"Authorization": f"Bearer {reply.json()['token']}"}

    def __enter__(self) -> Console:
        self.thread.start()
        for _ in range(100):
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the console did not answer /health")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sessions.kw["bind"].dispose()
