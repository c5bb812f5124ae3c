"""The service graph: what each service depends on, and the order to start them.

A factory's plan (the appliance's is `appliance.services.plan`) gives one `ServiceSpec` per service, whose
``key`` holds the settings that can only change by restarting that service (its port, say); a reload restarts
a service whose key changed and hands every other setting to the running service. `start_order` sorts
specs so that dependencies come first, and names a cycle or an unknown dependency as a `GraphError`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from appliance.errors import ApplianceError


class GraphError(ApplianceError):
    """The services cannot be ordered: a dependency cycle, an unknown dependency, a name used twice."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    depends_on: tuple[str, ...] = ()
    key: Hashable = None  # structural settings: a reload that changes them restarts the service


def start_order(specs: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Dependencies first; otherwise the given order is kept (stable)."""
    by_name: dict[str, ServiceSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise GraphError(f"two services named {spec.name!r}")
        by_name[spec.name] = spec
    for spec in specs:
        missing = [d for d in spec.depends_on if d not in by_name]
        if missing:
            raise GraphError(f"service {spec.name!r} depends on {', '.join(map(repr, missing))}, "
                             "which is not enabled or does not exist")
    order: list[ServiceSpec] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(spec: ServiceSpec) -> None:
        if spec.name in done:
            return
        if spec.name in visiting:
            cycle = [*visiting[visiting.index(spec.name):], spec.name]
            raise GraphError("dependency cycle: " + " -> ".join(cycle))
        visiting.append(spec.name)
        for dep in spec.depends_on:
            visit(by_name[dep])
        visiting.pop()
        done.add(spec.name)
        order.append(spec)

    for spec in specs:
        visit(spec)
    return order
