"""Which of the appliance's services run, for these settings: a pure function (no I/O) that the supervisor's
graph asks at start-up and at every reload. A new service (the update agent, the console, the upstream server)
is one more entry here and one more class beside the others in this package."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING

from appliance.supervisor.graph import GraphError, ServiceSpec

if TYPE_CHECKING:
    from appliance.config import Settings

API, SIP, WYOMING, AGENT = "api", "sip", "wyoming", "agent"
SERVICES = (API, SIP, WYOMING, AGENT)


def wyoming_enabled(settings: Settings) -> bool:
    """``wyoming.enabled``: Wyoming runs only when asked for (it has no authentication)."""
    return bool(settings.wyoming.enabled)


def plan(settings: Settings, only: Collection[str] | None = None) -> list[ServiceSpec]:
    """The appliance's services for these settings: the HTTP API (with the kiosk page and WebRTC) always, the
    phone when ``sip.enabled``, the Wyoming servers when ``wyoming.enabled``, the update agent when
    ``fleet.repository`` is set; or exactly the services named in
    ``only`` (`appliance run --only`), whatever the settings enable. The models warm outside every service, so
    none depends on another."""
    if only is not None:
        unknown = sorted(set(only) - set(SERVICES))
        if unknown or not only:
            named = f"no service called {', '.join(map(repr, unknown))}" if unknown else "no service named"
            raise GraphError(f"{named}; the services are {', '.join(SERVICES)}")

    def wanted(name: str, enabled: bool) -> bool:
        return name in only if only is not None else enabled

    api, sip = settings.api, settings.sip
    specs = []
    if wanted(API, True):
        specs.append(ServiceSpec(API, key=(api.host, api.port, api.max_upload_mb, str(api.keys_file))))
    if wanted(SIP, sip.enabled):
        accounts = tuple((a.name, a.registrar, a.user, a.password.get_secret_value(), a.auth_user, a.transport,
                          a.expires_s) for a in sip.accounts)
        specs.append(ServiceSpec(SIP, key=(sip.host, sip.port, sip.advertise, sip.rtp_port_min, sip.rtp_port_max,
                                           tuple(sip.codecs), accounts)))
    if wanted(WYOMING, wyoming_enabled(settings)):
        wyoming = settings.wyoming
        specs.append(ServiceSpec(WYOMING, key=(wyoming.stt_uri, wyoming.tts_uri, tuple(wyoming.allow))))
    if wanted(AGENT, bool(settings.fleet.repository)):
        specs.append(ServiceSpec(AGENT, key=(json.dumps(settings.fleet.model_dump(mode="json"), sort_keys=True),)))
    return specs


RESTART_SECTIONS = ("hw", "models", "runtime", "voice")


def needs_process_restart(old: Settings, new: Settings) -> list[str]:
    """Sections that changed and that the running process cannot apply (the voice stack is built once)."""
    return [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
