"""Residency: models load lazily on first use, are shared by every session, and idle ones are
unloaded least-recently-used first when the memory budget would be exceeded or memory runs short.

A `Lease` is how the voice core holds a model it may lose while idle: each use borrows it from the pool (loading
it again if it was unloaded). A `Pinned` model is held for the device's lifetime (what a call needs within its
first half second: the VAD, the main ASR, the voices) and never unloaded."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Resident:
    model_id: str
    handle: Any
    size: int
    users: int = 0
    last_used: float = 0.0


class ModelPool:
    """Thread-safe pool of loaded models.

    ``load(model_id)`` returns a handle (anything with an optional ``close()``); ``size_of(model_id)``
    estimates its resident bytes. A model in use is never unloaded; if everything resident is busy the
    budget is exceeded rather than a session failed, and that is logged.
    """

    def __init__(self, load: Callable[[str], Any], size_of: Callable[[str], int], budget_bytes: int) -> None:
        self._load = load
        self._size_of = size_of
        self.budget_bytes = budget_bytes
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        self.loads = 0
        self.unloads = 0

    @contextmanager
    def use(self, model_id: str) -> Iterator[Any]:
        """Borrow a model for the duration of the block (one inference or one session)."""
        entry = self._acquire(model_id)
        try:
            yield entry.handle
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()

    def _acquire(self, model_id: str) -> Resident:
        while True:
            with self._lock:
                entry = self._resident.get(model_id)
                if entry is not None:
                    entry.users += 1
                    self._resident.move_to_end(model_id)
                    return entry
                pending = self._loading.get(model_id)
                if pending is None:
                    self._loading[model_id] = threading.Event()
                    break
            pending.wait()  # another thread is loading it: wait, then take the shared instance
        try:
            size = self._size_of(model_id)
            with self._lock:
                self._make_room(size)
            handle = self._load(model_id)
            with self._lock:
                entry = Resident(model_id, handle, size, users=1, last_used=time.monotonic())
                self._resident[model_id] = entry
                self.loads += 1
                return entry
        finally:
            with self._lock:
                self._loading.pop(model_id).set()

    def _make_room(self, incoming: int) -> None:
        for model_id in list(self._resident):
            if self.resident_bytes + incoming <= self.budget_bytes:
                return
            entry = self._resident[model_id]
            if entry.users == 0:
                self._unload(entry)
        if self.resident_bytes + incoming > self.budget_bytes:
            log.warning("model memory budget exceeded: %d MiB resident and in use, %d MiB more needed",
                        self.resident_bytes >> 20, incoming >> 20)

    def _unload(self, entry: Resident) -> None:
        del self._resident[entry.model_id]
        self.unloads += 1
        close = getattr(entry.handle, "close", None)
        if callable(close):
            close()
        log.info("unloaded idle model %s (%d MiB)", entry.model_id, entry.size >> 20)

    def retire(self, model_id: str) -> bool:
        """Forget the loaded copy of a model (a new version was activated): the next use loads the store's
        active version. The old copy is not closed here: whoever still holds it (a session of the previous
        voice stack) finishes with it, and it is freed when the last reference goes. Whether one was loaded."""
        with self._lock:
            return self._resident.pop(model_id, None) is not None

    def unload_idle(self) -> list[str]:
        """Drop every idle model now (memory pressure)."""
        with self._lock:
            idle = [e for e in self._resident.values() if e.users == 0]
            for entry in idle:
                self._unload(entry)
            return [e.model_id for e in idle]

    @property
    def resident_bytes(self) -> int:
        return sum(e.size for e in self._resident.values())

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)


class Lease:
    """A model borrowed from the pool for each use; idle, it may be unloaded, and the next use loads it again."""

    def __init__(self, pool: ModelPool, model_id: str, part: Callable[[Any], Any] = lambda loaded: loaded) -> None:
        self.pool, self.model_id, self.part = pool, model_id, part  # part: what of the pool's entry users get

    @contextmanager
    def use(self) -> Iterator[Any]:
        with self.pool.use(self.model_id) as loaded:
            yield self.part(loaded)


class Pinned:
    """A model kept loaded (its pool entry is held open by the device): the same interface as a Lease."""

    def __init__(self, handle: Any, model_id: str = "") -> None:
        self.handle, self.model_id = handle, model_id

    @contextmanager
    def use(self) -> Iterator[Any]:
        yield self.handle
