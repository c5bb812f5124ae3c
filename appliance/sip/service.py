"""The SIP service as configured: the phone on its port and the registrations of every account."""

from __future__ import annotations

import time
from typing import Any

from appliance.config.settings import SipSettings
from appliance.errors import ApplianceError
from appliance.sip.digest import DigestClient
from appliance.sip.outbound import Registration
from appliance.sip.phone import Phone, PhoneOptions, Router
from appliance.sip.transport import Bound


def phone_options(settings: SipSettings) -> PhoneOptions:
    return PhoneOptions(host=settings.host, port=settings.port, advertise=settings.advertise,
                        rtp_ports=(settings.rtp_port_min, settings.rtp_port_max), max_calls=settings.max_calls,
                        retry_after_s=settings.retry_after_s, ring_s=settings.ring_s, codecs=tuple(settings.codecs),
                        allow=tuple(settings.allow),
                        users=tuple((u, p.get_secret_value()) for u, p in settings.users.items()))


def account_credentials(settings: SipSettings, name: str) -> tuple[str, DigestClient]:
    """The user and digest credentials of a configured account, for outbound calls."""
    for a in settings.accounts:
        if a.name == name:
            return a.user, DigestClient(a.auth_user or a.user, a.password.get_secret_value())
    raise ApplianceError(f"no SIP account named {name!r} in the configuration "
                         f"(have: {', '.join(a.name for a in settings.accounts) or 'none'})")


class SipService:
    def __init__(self, settings: SipSettings, router: Router, sockets: Bound | None = None) -> None:
        self.settings = settings
        self.phone = Phone(phone_options(settings), router, sockets)
        self.registrations = [
            Registration(self.phone.agent, a.name, a.registrar, a.user, a.password.get_secret_value(), a.auth_user,
                         a.transport, a.expires_s) for a in settings.accounts]

    async def start(self) -> None:
        await self.phone.start()
        for registration in self.registrations:
            registration.start()

    async def stop(self) -> None:
        for registration in self.registrations:
            await registration.stop()
        await self.phone.stop()

    def status(self) -> dict[str, Any]:
        now = time.time()
        accounts = [{"name": r.name, "aor": str(r.aor.uri), "registered": r.state.registered,
                     "expires_in_s": round(r.state.expires_at - now) if r.state.expires_at else None,
                     "last_status": r.state.last_status, "last_error": r.state.last_error}
                    for r in self.registrations]
        return {**self.phone.status(), "listen": f"{self.settings.host}:{self.phone.agent.port}",
                "accounts": accounts}
