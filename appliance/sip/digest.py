"""HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760).

Both sides, as pure functions over small dataclasses: the client parses ``WWW-Authenticate`` /
``Proxy-Authenticate`` values into Challenges, picks the strongest it supports and answers with Credentials
(the ``Authorization`` / ``Proxy-Authorization`` value); a registrar issues a Challenge and verifies the
Credentials it gets back. Nonce bookkeeping on the server (expiry, nc replay) belongs to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from appliance.errors import ApplianceError

# RFC 8760 names; each hash with its "-sess" variant (RFC 7616 §3.4.2). Strongest first.
HASHES: dict[str, Callable[[bytes], str]] = {
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
}
ALGORITHMS = tuple(name + sess for name in HASHES for sess in ("", "-sess"))
QOPS = ("auth", "auth-int")
# (status, challenge header, credentials header): 401 from a UAS/registrar, 407 from a proxy (§22.2, §22.3).
HEADERS = {401: ("WWW-Authenticate", "Authorization"), 407: ("Proxy-Authenticate", "Proxy-Authorization")}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class DigestError(ApplianceError):
    """A challenge or credentials that cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _canonical_algorithm(name: str) -> str:
    return next((a for a in ALGORITHMS if a.lower() == name.lower()), name)


@dataclass(frozen=True)
class Challenge:
    """One ``Digest`` challenge. ``algorithm`` is canonical when known (MD5, SHA-256-sess…), as sent otherwise."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # empty: RFC 2069 compatibility, no cnonce/nc
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    userhash: bool = False

    @property
    def supported(self) -> bool:
        return self.algorithm in ALGORITHMS and (not self.qop or any(q in QOPS for q in self.qop))

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        parts += [f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class Credentials:
    """The answer to a challenge: what goes in ``Authorization`` / ``Proxy-Authorization``."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int | None = None  # rendered as 8 hex digits
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> Credentials:
        schemes = _split(value)
        if len(schemes) != 1 or schemes[0][0].lower() != "digest":
            raise DigestError(f"not a single Digest credentials value: {value[:80]!r}")
        params = schemes[0][1]
        missing = [p for p in ("username", "realm", "nonce", "uri", "response") if p not in params]
        if missing:
            raise DigestError(f"malformed credentials: no {', '.join(missing)}")
        qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
        if qop is not None and (nc is None or cnonce is None):
            raise DigestError("malformed credentials: qop without nc and cnonce")
        if nc is not None and not re.fullmatch(r"[0-9A-Fa-f]{8}", nc):
            raise DigestError(f"malformed credentials: nc={nc[:20]!r} is not 8 hex digits")
        return cls(params["username"], params["realm"], params["nonce"], params["uri"], params["response"].lower(),
                   _canonical_algorithm(params.get("algorithm", "MD5")), qop, int(nc, 16) if nc else None, cnonce,
                   params.get("opaque"), params.get("userhash", "").lower() == "true")

    def __str__(self) -> str:
        parts = [f"username={_quote(self.username)}", f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}",
                 f"uri={_quote(self.uri)}", f"response={_quote(self.response)}", f"algorithm={self.algorithm}"]
        if self.qop is not None:
            parts += [f"cnonce={_quote(self.cnonce or '')}", f"nc={self.nc or 0:08x}", f"qop={self.qop}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def parse_challenges(values: str | Iterable[str]) -> list[Challenge]:
    """Every Digest challenge in one or more header values (RFC 7235 allows several per value).

    Other schemes (Basic, Negotiate…) are skipped; a malformed Digest challenge raises DigestError."""
    out = []
    for value in [values] if isinstance(values, str) else values:
        for scheme, params in _split(value):
            if scheme.lower() == "digest":
                out.append(_challenge(params))
    return out


def choose(challenges: Iterable[Challenge]) -> Challenge:
    """The strongest challenge we can answer: SHA-512-256 over SHA-256 over MD5, plain over -sess."""
    offered = list(challenges)
    usable = [c for c in offered if c.supported]
    if not usable:
        if not offered:
            raise DigestError("no Digest challenge offered")
        algorithms = sorted({c.algorithm for c in offered})
        qops = sorted({q for c in offered for q in c.qop if q not in QOPS})
        detail = f"algorithm {', '.join(algorithms)}" + (f", qop {', '.join(qops)}" if qops else "")
        raise DigestError(f"unsupported Digest challenge only ({detail}); supported: {', '.join(ALGORITHMS)}")
    return min(usable, key=lambda c: ALGORITHMS.index(c.algorithm))


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password): what a registrar may store instead of the password."""
    return _hash(algorithm)(f"{username}:{realm}:{password}".encode())


def authorize(challenge: Challenge, username: str, password: str, method: str, uri: str, *, nc: int = 1,
              cnonce: str | None = None, body: bytes = b"", qop: str | None = None) -> Credentials:
    """Answer ``challenge`` for ``method`` on ``uri`` (the Request-URI). qop defaults to auth when offered,
    auth-int otherwise; ``body`` only counts for auth-int."""
    if not challenge.supported:
        choose([challenge])  # raises with the reason
    count: int | None = None
    if challenge.qop:
        qop = qop or ("auth" if "auth" in challenge.qop else "auth-int")
        if qop not in challenge.qop or qop not in QOPS:
            raise DigestError(f"qop {qop} not offered (offered: {', '.join(challenge.qop)})")
        if not 0 < nc < 2**32:
            raise DigestError(f"nc {nc} out of range (1 to ffffffff)")
        count, cnonce = nc, cnonce or secrets.token_hex(8)
    elif qop is not None:
        raise DigestError(f"qop {qop} not offered: the challenge has no qop")
    else:
        cnonce = None  # RFC 2069: no cnonce, no nc
    name = _hash(challenge.algorithm)(f"{username}:{challenge.realm}".encode()) if challenge.userhash else username
    secret = ha1(username, challenge.realm, password, challenge.algorithm)
    credentials = Credentials(name, challenge.realm, challenge.nonce, uri, "", challenge.algorithm, qop, count,
                              cnonce, challenge.opaque, challenge.userhash)
    return replace(credentials, response=response(credentials, method, secret, body))


def response(credentials: Credentials, method: str, secret_ha1: str, body: bytes = b"") -> str:
    """The request-digest (RFC 7616 §3.4.1) for these credentials, from H(username:realm:password)."""
    h = _hash(credentials.algorithm)
    a1 = secret_ha1
    if credentials.algorithm.endswith("-sess"):
        a1 = h(f"{secret_ha1}:{credentials.nonce}:{credentials.cnonce or ''}".encode())
    a2 = f"{method}:{credentials.uri}"
    if credentials.qop == "auth-int":
        a2 += ":" + h(body)
    if credentials.qop is None:
        return h(f"{a1}:{credentials.nonce}:{h(a2.encode())}".encode())
    data = f"{a1}:{credentials.nonce}:{credentials.nc or 0:08x}:{credentials.cnonce}:{credentials.qop}:{h(a2.encode())}"
    return h(data.encode())


def new_challenge(realm: str, algorithm: str = "MD5", qop: tuple[str, ...] = ("auth",), opaque: str | None = None,
                  stale: bool = False, nonce: str | None = None) -> Challenge:
    """A fresh challenge for a 401/407; the caller remembers the nonce to check freshness and nc later."""
    challenge = Challenge(realm, nonce or secrets.token_urlsafe(24), _canonical_algorithm(algorithm), qop, opaque,
                          stale)
    if not challenge.supported:
        raise DigestError(f"cannot issue algorithm {algorithm} with qop {qop}")
    return challenge


def verify(credentials: Credentials, method: str, *, password: str | None = None, secret_ha1: str | None = None,
           challenge: Challenge | None = None, body: bytes = b"") -> bool:
    """True when ``credentials`` prove the password (or its HA1) for ``method``; with ``challenge``, they must
    also answer that challenge (realm, nonce, opaque, algorithm, an offered qop)."""
    if credentials.algorithm not in ALGORITHMS or credentials.qop not in (None, *QOPS):
        return False
    if challenge is not None and not (
            credentials.realm == challenge.realm and credentials.nonce == challenge.nonce
            and credentials.opaque == challenge.opaque and credentials.algorithm == challenge.algorithm
            and (credentials.qop in challenge.qop if challenge.qop else credentials.qop is None)):
        return False
    if secret_ha1 is None:
        if password is None:
            raise DigestError("verify needs the password or its HA1")
        if credentials.userhash:
            raise DigestError("userhash credentials need the HA1 of the user they hash")
        secret_ha1 = ha1(credentials.username, credentials.realm, password, credentials.algorithm)
    expected = response(credentials, method, secret_ha1, body)
    return hmac.compare_digest(expected, credentials.response.lower())


@dataclass
class DigestClient:
    """One user's answers: counts nc per nonce (RFC 7616 §3.4: 00000001, 00000002… while the nonce lasts)."""

    username: str
    password: str
    counts: dict[str, int] = field(default_factory=dict, repr=False)

    def answer(self, challenge: Challenge, method: str, uri: str, body: bytes = b"") -> Credentials:
        nc = self.counts.pop(challenge.nonce, 0) + 1
        self.counts[challenge.nonce] = nc
        while len(self.counts) > 16:  # only recent nonces can still be valid
            del self.counts[next(iter(self.counts))]
        return authorize(challenge, self.username, self.password, method, uri, nc=nc, body=body)


def _hash(algorithm: str) -> Callable[[bytes], str]:
    base = algorithm.removesuffix("-sess")
    if base not in HASHES:
        raise DigestError(f"unsupported Digest algorithm {algorithm}; supported: {', '.join(ALGORITHMS)}")
    return HASHES[base]


def _challenge(params: dict[str, str]) -> Challenge:
    for needed in ("realm", "nonce"):
        if needed not in params:
            raise DigestError(f"malformed Digest challenge: no {needed}")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(params["realm"], params["nonce"], _canonical_algorithm(params.get("algorithm", "MD5")), qop,
                     params.get("opaque"), params.get("stale", "").lower() == "true", params.get("domain"),
                     params.get("userhash", "").lower() == "true")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(value: str) -> list[tuple[str, dict[str, str]]]:
    """``scheme a=b, c="d,e", Scheme2 …`` → [(scheme, {a: b, c: "d,e"}), …]: names lower-cased, quotes undone."""
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        match = _TOKEN.match(value, i)
        if not match:
            raise DigestError(f"malformed authentication header at {value[i:i + 20]!r}")
        name, i = match.group(), match.end()
        j = i
        while j < n and value[j] in " \t":
            j += 1
        if j >= n or value[j] != "=":
            out.append((name, {}))  # a scheme starts a new challenge
            continue
        if not out:
            raise DigestError(f"malformed authentication header: parameter {name!r} before any scheme")
        j += 1
        while j < n and value[j] in " \t":
            j += 1
        text, i = _value(value, j)
        params = out[-1][1]
        if name.lower() in params:
            raise DigestError(f"malformed authentication header: {name} given twice")
        params[name.lower()] = text
    return out


def _value(value: str, i: int) -> tuple[str, int]:
    if i < len(value) and value[i] == '"':
        chars, i = [], i + 1
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value):
                chars.append(value[i + 1])
                i += 2
            elif ch == '"':
                return "".join(chars), i + 1
            else:
                chars.append(ch)
                i += 1
        raise DigestError("malformed authentication header: unterminated quoted string")
    end = i
    while end < len(value) and value[end] not in ", \t":
        end += 1
    return value[i:end], end
