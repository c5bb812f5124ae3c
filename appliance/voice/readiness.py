"""Whether the voice models are warm: the one answer that every transport reads and /health shows.

The stack is built once per device, in a daemon thread of its own (``WARM_THREAD``) rather than the loop's
executor: a SIGTERM while the models load (seconds) must not wait for them, and asyncio.run joins every executor
thread before it returns; `loading()` tells the entry point to leave at once instead. Until the stack is built,
`current()` is None and `wait()` waits a little, then raises `ModelsNotReady`, whose ``retry_after_s`` each
transport turns into its own "try later": HTTP 503 with Retry-After, the realtime WebSocket's error event and
close 1013, SIP 503 with Retry-After, a Wyoming Error event. Waiters may sit on any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from appliance.errors import ApplianceError
from appliance.voice.stack import VoiceStack

log = logging.getLogger(__name__)
WARM_THREAD = "models-warm"
RETRY_AFTER_S = 5  # what a client is told while the models warm (all default models: 5-10 s on 2 cores)
WAIT_S = 5.0  # how long a request that can wait (Wyoming) waits for warming models
State = Literal["warming", "ready", "failed"]


class ModelsNotReady(ApplianceError):
    """No voice stack: still loading (retry after ``retry_after_s``) or failed to load (``retry_after_s`` None)."""

    def __init__(self, message: str, retry_after_s: int | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class VoiceModels:
    """The device's voice stack and its state: warming, ready or failed (with the reason)."""

    def __init__(self, build: Callable[[], VoiceStack] | None = None, retry_after_s: int = RETRY_AFTER_S) -> None:
        self._build = build
        self.retry_after_s = retry_after_s
        self._stack: VoiceStack | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, stack: VoiceStack) -> VoiceModels:
        """Models that are warm already (a command that built its stack, tests)."""
        models = cls()
        models._settle(stack, None)
        return models

    @property
    def state(self) -> State:
        return "ready" if self._stack is not None else "failed" if self.error is not None else "warming"

    def current(self) -> VoiceStack | None:
        return self._stack

    def require(self) -> VoiceStack:
        """The stack now, or ModelsNotReady saying why there is none."""
        if self._stack is not None:
            return self._stack
        if self.error is not None:
            raise ModelsNotReady(f"the voice models could not be loaded: {self.error}", None)
        raise ModelsNotReady(f"the voice models are still loading; retry in {self.retry_after_s} s", self.retry_after_s)

    async def wait(self, timeout_s: float | None = WAIT_S) -> VoiceStack:
        """The stack, waiting up to ``timeout_s`` while it warms (None: until it is built or fails)."""
        if self.state == "warming":
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                waiting = self.state == "warming"
                if waiting:
                    self._waiters.append((loop, future))
            if waiting:
                try:
                    await asyncio.wait_for(future, timeout_s)
                except TimeoutError:
                    with self._lock, contextlib.suppress(ValueError):
                        self._waiters.remove((loop, future))
        return self.require()

    async def swap(self, build: Callable[[], VoiceStack]) -> VoiceStack | None:
        """Build a new stack (a model was updated) in a worker thread while the current one serves, then make
        it current; the previous stack is returned for its owner to stop once its sessions are over. A failed
        build raises and leaves the current stack in place."""
        new = await asyncio.to_thread(build)
        with self._lock:
            old, self._stack, self.error = self._stack, new, None
        return old

    def start(self) -> None:
        """Start building the stack (once) in ``WARM_THREAD``."""
        if self._build is not None and self._thread is None and self.state == "warming":
            self._thread = threading.Thread(target=self._run, name=WARM_THREAD, daemon=True)
            self._thread.start()

    async def warm(self) -> None:
        """Build the stack and wait for the outcome, which is kept (a failure logged), never raised."""
        self.start()
        with contextlib.suppress(ModelsNotReady):
            await self.wait(None)

    def loading(self) -> bool:
        """True while the warming thread builds the stack (a runtime may be initialising in it)."""
        return self.state == "warming" and self._thread is not None and self._thread.is_alive()

    def note(self) -> str:
        return {"ready": "models ready", "failed": f"models failed: {self.error}", "warming": "models warming"}[
            self.state]

    def health(self) -> dict[str, Any]:
        """What /health says of the models."""
        return {"ready": self.state == "ready", "error": self.error}

    def _run(self) -> None:
        assert self._build is not None
        try:
            stack = self._build()
        except Exception as exc:  # reported in the status and as "not ready" answers, never fatal
            log.error("the voice models could not be loaded: %s", exc)
            self._settle(None, str(exc) or type(exc).__name__)
        else:
            self._settle(stack, None)

    def _settle(self, stack: VoiceStack | None, error: str | None) -> None:
        with self._lock:
            self._stack, self.error = stack, error
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there any more
                loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
