"""Choosing a runtime per model: a pure plan from (profile, model, backends), then probing I/O.

A candidate wins only if its library imports, its device is present, the model loads and a smoke
inference gives a sane result. Every rejection is kept with its reason for `appliance doctor`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.hw.profiles import Candidate
from appliance.models.store import ModelFiles
from appliance.runtime.base import Backend, ModelRejected, RuntimeUnavailable
from appliance.runtime.smoke import smoke_test

COMPARE_RUNS = 3


@dataclass
class Attempt:
    candidate: str
    passed: bool
    reason: str
    load_ms: float | None = None
    smoke_ms: float | None = None
    tried: bool = True


@dataclass
class Selection:
    model_id: str
    winner: str | None
    attempts: list[Attempt]
    handle: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_id, "runtime": self.winner, "attempts": [asdict(a) for a in self.attempts]}

    def close(self) -> None:
        _close(self.handle)
        self.handle = None

    @property
    def reason(self) -> str:
        """Why nothing won: every rejection, in order."""
        return "; ".join(f"{a.candidate}: {a.reason}" for a in self.attempts if not a.passed)


def plan(
    candidates: Sequence[Candidate], formats: Sequence[str], backends: Mapping[str, Backend]
) -> tuple[list[Candidate], list[Attempt]]:
    """Pure: keep the candidates whose backend exists and reads one of the model's formats."""
    keep, skipped = [], []
    for candidate in candidates:
        backend = backends.get(candidate.runtime)
        if backend is None:
            skipped.append(Attempt(str(candidate), False, f"no runtime backend named {candidate.runtime!r}"))
        elif not set(backend.formats) & set(formats):
            skipped.append(Attempt(str(candidate), False,
                                   f"needs a {'/'.join(backend.formats)} variant; model has {', '.join(formats)}"))
        else:
            keep.append(candidate)
    return keep, skipped


def select(
    model: ModelFiles,
    candidates: Sequence[Candidate],
    backends: Mapping[str, Backend],
    compare: bool = False,
) -> Selection:
    """Try candidates in order; the first that passes wins, or with ``compare`` the fastest that passes."""
    runnable, attempts = plan(candidates, list(model.variants), backends)
    order = {str(c): i for i, c in enumerate(candidates)}
    passed: list[tuple[float, Candidate, Any]] = []
    for n, candidate in enumerate(runnable):
        if passed and not compare:
            attempts += [Attempt(str(c), False, "not tried: an earlier candidate passed", tried=False)
                         for c in runnable[n:]]
            break
        backend = backends[candidate.runtime]
        attempt = Attempt(str(candidate), False, "")
        attempts.append(attempt)
        try:
            backend.check(candidate)
            start = time.perf_counter()
            handle = backend.load(model, candidate)
            attempt.load_ms = _ms(start)
            start = time.perf_counter()
            attempt.reason = smoke_test(model.kind, handle, model)
            attempt.smoke_ms = _ms(start)
        except (RuntimeUnavailable, ModelRejected) as exc:
            attempt.reason = str(exc)
            continue
        attempt.passed = True
        passed.append((_time_smoke(model, handle) if compare else 0.0, candidate, handle))
    attempts.sort(key=lambda a: order.get(a.candidate, 0))
    if not passed:
        return Selection(model.model_id, None, attempts)
    passed.sort(key=lambda p: p[0])
    best_ms, winner, handle = passed[0]
    for elapsed, loser, other in passed[1:]:
        _close(other)
        for a in attempts:
            if a.candidate == str(loser):
                a.passed = False
                a.reason = f"passed, but slower: {elapsed:.1f} ms vs {best_ms:.1f} ms per smoke inference"
    return Selection(model.model_id, str(winner), attempts, handle)


def _time_smoke(model: ModelFiles, handle: Any) -> float:
    start = time.perf_counter()
    for _ in range(COMPARE_RUNS):
        smoke_test(model.kind, handle, model)
    return _ms(start) / COMPARE_RUNS


def _close(handle: Any) -> None:
    close = getattr(handle, "close", None)
    if callable(close):
        close()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
