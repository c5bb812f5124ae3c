"""The service graph: which services the settings enable, what each depends on, and the order to start them.

`plan(settings)` is a pure function of the settings (no I/O): one `ServiceSpec` per enabled service, whose
``key`` holds the settings that can only change by restarting that service (its port, say); a reload restarts
a service whose key changed and hands every other setting to the running service. `start_order` sorts
specs so that dependencies come first, and names a cycle or an unknown dependency as a `GraphError`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError

API, SIP, WYOMING = "api", "sip", "wyoming"


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


def wyoming_enabled(settings: Any) -> bool:
    """``wyoming.enabled``: Wyoming runs only when asked for (it has no authentication)."""
    return bool(settings.wyoming.enabled)


def plan(settings: Any) -> list[ServiceSpec]:
    """The appliance's services for these settings (an ``appliance.config.Settings``): the HTTP API (with the
    kiosk page and WebRTC) always, the phone when ``sip.enabled``, the Wyoming servers when
    ``wyoming.enabled``. The models warm outside every service, so none depends on another."""
    api, sip = settings.api, settings.sip
    specs = [ServiceSpec(API, key=(api.host, api.port, api.max_upload_mb, str(api.keys_file)))]
    if sip.enabled:
        accounts = tuple((a.name, a.registrar, a.user, a.password.get_secret_value(), a.auth_user, a.transport,
                          a.expires_s) for a in sip.accounts)
        specs.append(ServiceSpec(SIP, key=(sip.host, sip.port, sip.advertise, sip.rtp_port_min, sip.rtp_port_max,
                                           tuple(sip.codecs), accounts)))
    if wyoming_enabled(settings):
        wyoming = settings.wyoming
        specs.append(ServiceSpec(WYOMING, key=(wyoming.stt_uri, wyoming.tts_uri, tuple(wyoming.allow))))
    return specs


RESTART_SECTIONS = ("hw", "models", "runtime", "voice")


def needs_process_restart(old: Any, new: Any) -> list[str]:
    """Sections that changed and that the running process cannot apply (the voice stack is built once)."""
    return [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
