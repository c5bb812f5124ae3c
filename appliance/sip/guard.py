"""Who may call the appliance: source networks (403 for others) and, when users are configured, digest
authentication of every INVITE (RFC 3261 §22.1: 401 with a challenge, nonces that expire and are not
replayed, nc counting upwards)."""

from __future__ import annotations

import ipaddress
import secrets
import time
from dataclasses import dataclass, field

from appliance.config.settings import PRIVATE_NETWORKS
from appliance.sip.digest import Challenge, Credentials, DigestError, new_challenge, verify
from appliance.sip.message import Request

PRIVATE = PRIVATE_NETWORKS
NONCE_LIFETIME_S = 300.0


@dataclass(frozen=True)
class Verdict:
    status: int  # 0: let it through
    reason: str = ""
    challenge: Challenge | None = None


@dataclass
class CallerGuard:
    allow: list[str] = field(default_factory=lambda: list(PRIVATE))  # empty: any address
    users: dict[str, str] = field(default_factory=dict, repr=False)  # user -> password; empty: no digest
    realm: str = "appliance"
    algorithm: str = "SHA-256"
    _networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(init=False, repr=False)
    _nonces: dict[str, tuple[float, int]] = field(default_factory=dict, init=False, repr=False)  # issued, last nc

    def __post_init__(self) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in self.allow]

    def check(self, request: Request, source_ip: str) -> Verdict:
        if self._networks:
            try:
                address = ipaddress.ip_address(source_ip)
            except ValueError:
                return Verdict(403, "Forbidden (source address)")
            if not any(address in network for network in self._networks):
                return Verdict(403, "Forbidden (source address not allowed)")
        if not self.users:
            return Verdict(0)
        now = time.monotonic()
        self._nonces = {n: v for n, v in self._nonces.items() if now - v[0] < NONCE_LIFETIME_S}
        header = request.get("Authorization")
        if header is None:
            return self._challenge(now, stale=False)
        try:
            credentials = Credentials.parse(header)
        except DigestError:
            return Verdict(400, "Bad Request (malformed Authorization)")
        issued = self._nonces.get(credentials.nonce)
        if issued is None:  # unknown or expired: a fresh nonce, marked stale when the answer was otherwise fine
            return self._challenge(now, stale=self._proves(credentials, request, credentials.nonce))
        nc = credentials.nc or 0
        if nc <= issued[1] or not self._proves(credentials, request, credentials.nonce):
            return self._challenge(now, stale=False)
        self._nonces[credentials.nonce] = (issued[0], nc)
        return Verdict(0)

    def _proves(self, credentials: Credentials, request: Request, nonce: str) -> bool:
        password = self.users.get(credentials.username)
        if password is None or credentials.realm != self.realm:
            return False
        challenge = Challenge(self.realm, nonce, self.algorithm, ("auth",))
        try:
            return verify(credentials, request.method, password=password, challenge=challenge)
        except DigestError:
            return False

    def _challenge(self, now: float, stale: bool) -> Verdict:
        nonce = secrets.token_urlsafe(18)
        self._nonces[nonce] = (now, 0)
        return Verdict(401, "Unauthorized", new_challenge(self.realm, self.algorithm, nonce=nonce, stale=stale))
