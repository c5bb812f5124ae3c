"""Which upstream endpoint, if any, takes a piece of work: the `[upstream]` settings as live objects.

Each endpoint has its timeout and a circuit breaker shared by every task that uses it. For a task (chat,
summary, translation) ``plan`` gives the routes to try in order, their conditions already applied: a
`not-local` route only when no on-device model serves the work, a `low-confidence` one only when the local
result's confidence is under its threshold, and none whose endpoint's breaker is open ("the link is down").
Each route has a time budget; whoever follows the plan falls back to the local path when it runs out. One
``Routes`` lives for the process: a reload re-applies the settings and keeps the breakers of the endpoints
that did not change. Counters go to a Prometheus registry (requests by outcome, fallbacks, breaker trips).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from appliance.config.upstream import EndpointSettings, RouteSettings, RouteTask, UpstreamSettings
from appliance.runtime.breaker import Breaker

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
MIN_TIMEOUT_S = 0.05  # less left of a task's budget than this: no further route is tried


@dataclass(frozen=True)
class Endpoint:
    name: str
    settings: EndpointSettings
    breaker: Breaker = field(compare=False)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def api_key(self) -> str | None:
        key = self.settings.api_key
        return key.get_secret_value() if key else None

    @property
    def model(self) -> str:
        return self.settings.model


@dataclass(frozen=True)
class Route:
    task: RouteTask
    endpoint: Endpoint
    settings: RouteSettings

    def timeout_s(self, deadline: float | None = None) -> float:
        """The endpoint's timeout cut to the route's budget and to what is left before ``deadline``."""
        limits = [self.endpoint.settings.timeout_s]
        if self.settings.budget_s is not None:
            limits.append(self.settings.budget_s)
        if deadline is not None:
            limits.append(max(0.0, deadline - time.monotonic()))
        return min(limits)


@dataclass(frozen=True)
class Attempt:
    """One route's turn at a piece of work, with the time it may take; ``ok``/``failed``/``refused``/``dropped``
    count the outcome and tell the endpoint's breaker whether the server answered."""

    routes: Routes
    route: Route
    timeout_s: float

    def ok(self) -> None:
        self.route.endpoint.breaker.succeeded()
        self.routes.outcome(self.route, "ok")

    def failed(self, reason: str) -> None:
        """The endpoint did not answer (timeout, refused, an error status): a failure for its breaker."""
        self.route.endpoint.breaker.failed()
        self.routes.outcome(self.route, reason)

    def refused(self, reason: str) -> None:
        """The endpoint answered, but not usably (a guard refused the answer): no failure of the link."""
        self.route.endpoint.breaker.succeeded()
        self.routes.outcome(self.route, reason)

    def dropped(self, reason: str) -> None:
        """Nothing was sent (the work was refused before it left): the breaker learns nothing."""
        self.route.endpoint.breaker.release()
        self.routes.outcome(self.route, reason)


class Routes:
    def __init__(self, settings: UpstreamSettings, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self.endpoints: dict[str, Endpoint] = {}
        self.routes: dict[RouteTask, list[Route]] = {}
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("appliance_upstream_requests", "Requests to upstream endpoints by outcome.",
                                ["task", "endpoint", "outcome"], registry=self.registry)
        self.fallbacks = Counter("appliance_upstream_fallbacks", "Work that went back to the local path.",
                                 ["task", "reason"], registry=self.registry)
        self.configure(settings)
        self.registry.register(_BreakerCollector(self))

    def configure(self, settings: UpstreamSettings) -> None:
        """Apply (new) settings; an endpoint whose settings did not change keeps its breaker."""
        with self._lock:
            endpoints = {}
            for name, conf in settings.all_endpoints().items():
                old = self.endpoints.get(name)
                breaker = old.breaker if old is not None and old.settings == conf else \
                    Breaker(name, conf.breaker_failures, conf.breaker_cooldown_s)
                endpoints[name] = Endpoint(name, conf, breaker)
            self.endpoints = endpoints
            self.routes = {task: [Route(task, endpoints[r.endpoint], r) for r in routes]
                           for task, routes in settings.all_routes().items()}

    def has(self, task: RouteTask) -> bool:
        return bool(self.routes.get(task))

    def budget(self, task: RouteTask) -> float:
        """The most a task may take upstream: its first route's budget (or its endpoint's timeout), whichever
        routes are usable now; 0 without routes."""
        routes = self.routes.get(task, [])
        return routes[0].timeout_s() if routes else 0.0

    def plan(self, task: RouteTask, local: bool = True, confidence: float | None = None,
             pair: str | None = None) -> list[Route]:
        """The routes to try for this piece of work, in order (empty: the local path, at once)."""
        chosen, down = [], 0
        for route in self.routes.get(task, []):
            rule = route.settings
            if rule.when == "not-local" and local:
                continue
            if rule.when == "low-confidence" and (confidence is None or confidence >= rule.min_confidence):
                continue
            if pair is not None and rule.pairs and pair not in rule.pairs:
                continue
            if route.endpoint.breaker.state == "open":
                down += 1
                continue
            chosen.append(route)
        if not chosen and down:
            self.fallbacks.labels(task, "breaker open").inc()
        return chosen

    def attempts(self, task: RouteTask, plan: list[Route]) -> Iterator[Attempt]:
        """The plan's routes in order, each with what is left of the task's budget (cut to the route's own), until
        the budget is spent; a route whose breaker refuses the call now is skipped (the caller then reports the
        attempt's outcome, which goes to the breaker)."""
        deadline = time.monotonic() + self.budget(task)
        for route in plan:
            timeout_s = route.timeout_s(deadline)
            if timeout_s <= MIN_TIMEOUT_S:
                return
            if not route.endpoint.breaker.allow():
                continue
            yield Attempt(self, route, timeout_s)

    def outcome(self, route: Route, outcome: str) -> None:
        """Count a request's outcome: ok, or why not."""
        self.requests.labels(route.task, route.endpoint.name, outcome).inc()

    def fell_back(self, task: RouteTask, reason: str) -> None:
        self.fallbacks.labels(task, reason).inc()

    def snapshot(self, full: bool = True) -> dict[str, Any]:
        """Every endpoint (no key) with its breaker, and every route; ``full=False``: breaker states only."""
        breakers = {name: e.breaker.snapshot() for name, e in self.endpoints.items()}
        if not full:
            return {"endpoints": {name: b["state"] for name, b in breakers.items()}}
        return {
            "endpoints": {name: {"base_url": e.base_url, "model": e.model, "timeout_s": e.settings.timeout_s,
                                 "breaker": breakers[name]} for name, e in self.endpoints.items()},
            "routes": {task: [{"endpoint": r.endpoint.name, "when": r.settings.when,
                               **({"min_confidence": r.settings.min_confidence}
                                  if r.settings.when == "low-confidence" else {}),
                               "budget_s": r.settings.budget_s, "pairs": r.settings.pairs} for r in routes]
                       for task, routes in self.routes.items()},
        }


class _BreakerCollector:
    """Breaker state (0 closed, 1 half-open, 2 open) and trips per endpoint, read when /metrics is scraped."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily("appliance_upstream_breaker_state", "0 closed, 1 half-open, 2 open.",
                                  labels=["endpoint"])
        trips = GaugeMetricFamily("appliance_upstream_breaker_opened", "Times the breaker opened.",
                                  labels=["endpoint"])
        for name, endpoint in self.routes.endpoints.items():
            state.add_metric([name], BREAKER_STATES[endpoint.breaker.state])
            trips.add_metric([name], endpoint.breaker.trips)
        yield state
        yield trips
