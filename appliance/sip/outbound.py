"""Requests the appliance starts itself: built per RFC 3261 §8.1.1, answered to digest challenges (§22.2),
and the registrations it keeps up (§10), refreshed before they expire and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from appliance.sip.agent import ALLOW, UserAgent
from appliance.sip.dialog import new_branch, new_tag
from appliance.sip.digest import DigestClient, DigestError, choose, parse_challenges
from appliance.sip.message import Request, Response
from appliance.sip.uri import Address, SipSyntaxError, SipUri

log = logging.getLogger(__name__)


def new_request(agent: UserAgent, method: str, uri: SipUri, sender: Address, recipient: Address,
                peer: str, transport: str, call_id: str | None = None, cseq: int = 1) -> Request:
    """An out-of-dialog request with a fresh From tag and Call-ID."""
    request = Request(method=method, uri=uri)
    request.add("Via", str(agent.via(peer, transport)))
    request.add("Max-Forwards", "70")
    request.add("From", f"{sender};tag={new_tag()}")
    request.add("To", str(recipient))
    request.add("Call-ID", call_id or f"{secrets.token_hex(12)}@appliance")
    request.add("CSeq", f"{cseq} {method}")
    request.add("Contact", agent.contact(peer, sender.uri.user or "appliance", transport))
    request.add("Allow", ALLOW)
    request.add("User-Agent", agent.user_agent)
    return request


def retry_with_credentials(request: Request, response: Response, digest: DigestClient) -> Request | None:
    """The same request again with credentials for the challenge in ``response`` (CSeq + 1, new branch), or
    None when the challenge cannot be answered."""
    header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
    try:
        challenge = choose(parse_challenges(response.get_all(header)))
        credentials = digest.answer(challenge, request.method, str(request.uri), request.body)
    except DigestError as exc:
        log.warning("cannot answer the %s challenge: %s", request.method, exc)
        return None
    again = Request(method=request.method, uri=request.uri, headers=list(request.headers), body=request.body)
    via = next(v for k, v in again.headers if k == "Via")
    again.set("Via", via.split(";branch=")[0] + f";branch={new_branch()};rport")
    again.set("CSeq", f"{request.cseq[0] + 1} {request.method}")
    again.set("Authorization" if response.status == 401 else "Proxy-Authorization", str(credentials))
    return again


async def send_authenticated(agent: UserAgent, request: Request, destination: tuple[str, int], transport: str,
                             digest: DigestClient | None, **kwargs: object) -> tuple[Request, Response]:
    """Send, answering up to two challenges (a second one only when the first nonce went stale)."""
    response = await agent.send_request(request, destination, transport, **kwargs)  # type: ignore[arg-type]
    for _ in range(2):
        if response.status not in (401, 407) or digest is None:
            break
        again = retry_with_credentials(request, response, digest)
        if again is None:
            break
        request = again
        response = await agent.send_request(request, destination, transport, **kwargs)  # type: ignore[arg-type]
    return request, response


@dataclass
class RegistrationState:
    registered: bool = False
    expires_at: float | None = None  # time.time()
    last_status: int | None = None
    last_error: str | None = None
    attempts: int = 0


class Registration:
    """Keeps one account registered: refreshes at 80 % of the granted lifetime (at least 30 s before the end),
    retries failures with exponential backoff (5 s … 5 min), and unregisters on stop."""

    def __init__(self, agent: UserAgent, name: str, registrar: str, user: str, password: str,
                 auth_user: str | None = None, transport: str = "udp", expires_s: int = 600) -> None:
        try:
            self.registrar = SipUri.parse(registrar)
        except SipSyntaxError as exc:
            raise SipSyntaxError(f"account {name}: bad registrar {registrar!r}: {exc}") from None
        self.agent, self.name, self.expires_s = agent, name, expires_s
        self.transport = transport.upper()
        self.aor = Address(SipUri("sip", self.registrar.host, user))
        self.digest = DigestClient(auth_user or user, password)
        self.state = RegistrationState()
        self._call_id = f"{secrets.token_hex(12)}@appliance"
        self._cseq = 0
        self._task: asyncio.Task[None] | None = None
        self._contact: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"register-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.state.registered:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.register(0), 5)

    async def register(self, expires: int | None = None) -> Response:
        """One REGISTER (with digest when challenged); updates ``state``."""
        expires = self.expires_s if expires is None else expires
        uri = SipUri(self.registrar.scheme, self.registrar.host, port=self.registrar.port,
                     params={"transport": "tcp"} if self.transport == "TCP" else {})
        destination, transport = await self.agent.resolve(uri)
        request = new_request(self.agent, "REGISTER", uri, self.aor, self.aor, destination[0], transport,
                              self._call_id, self._cseq + 1)
        request.add("Expires", str(expires))
        request, response = await send_authenticated(self.agent, request, destination, transport, self.digest)
        self._cseq = request.cseq[0]
        self.state.attempts += 1
        self.state.last_status = response.status
        if 200 <= response.status < 300:
            granted = _granted(response, request.get("Contact") or "", expires)
            self.state.registered = granted > 0
            self.state.expires_at = time.time() + granted if granted else None
            self.state.last_error = None
        else:
            self.state.registered = False
            self.state.last_error = f"{response.status} {response.reason}"
        return response

    async def _run(self) -> None:
        backoff = 5.0
        while True:
            try:
                response = await self.register()
            except (OSError, SipSyntaxError) as exc:
                self.state.last_error, response = str(exc), None
            if response is not None and response.status == 423:  # Interval Too Brief: take the minimum asked
                minimum = response.get("Min-Expires") or ""
                if minimum.isdigit():
                    self.expires_s = int(minimum)
                    continue
            if self.state.registered and self.state.expires_at is not None:
                backoff = 5.0
                await asyncio.sleep(refresh_after(self.state.expires_at - time.time()))
            else:
                log.warning("registration %s failed: %s; again in %.0f s", self.name, self.state.last_error,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(300.0, backoff * 2)


def refresh_after(left_s: float) -> float:
    """Seconds to wait before refreshing a binding with ``left_s`` to live: at 80 % of it, and at least 30 s
    before it ends when it is long enough for that (never less than a second)."""
    early = min(0.8 * left_s, left_s - 30) if left_s >= 60 else 0.8 * left_s
    return max(1.0, early)


def _granted(response: Response, our_contact: str, asked: int) -> int:
    """The lifetime the registrar granted our binding: its Contact's expires, else Expires, else what we asked."""
    ours = Address.parse(our_contact).uri if our_contact else None
    for value in response.get_all("Contact"):
        with contextlib.suppress(SipSyntaxError):
            contact = Address.parse(value)
            if ours is not None and (contact.uri.host, contact.uri.port, contact.uri.user) == \
                    (ours.host, ours.port, ours.user):
                expires = contact.params.get("expires")
                if expires and expires.isdigit():
                    return int(expires)
    header = response.get("Expires")
    return int(header) if header and header.isdigit() else asked
