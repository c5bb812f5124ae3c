"""SIP URIs and name-addr values (RFC 3261 §19.1, §25.1): parsed leniently, serialised canonically."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from appliance.errors import ApplianceError


class SipSyntaxError(ApplianceError):
    """A SIP element that cannot be parsed; the message says which and why."""


_HOSTPORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?::(?P<port>\d{1,5}))?$")


def _params(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        out[name.strip().lower()] = value.strip() if eq else None
    return out


def _render_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class SipUri:
    scheme: str  # sip, sips or tel
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipSyntaxError(f"not a SIP URI: {text[:80]!r}")
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls("tel", "", user=number, params=_params(params))
        rest, _, headers = rest.partition("?")
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            userinfo, hostpart = "", rest
        hostport, _, params = hostpart.partition(";")
        match = _HOSTPORT.match(hostport)
        if not match:
            raise SipSyntaxError(f"bad host in SIP URI: {text[:80]!r}")
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 0 < port < 65536:
            raise SipSyntaxError(f"port out of range in SIP URI: {text[:80]!r}")
        user, _, password = userinfo.partition(":")
        if at and not user:
            raise SipSyntaxError(f"empty user part in SIP URI: {text[:80]!r}")
        return cls(scheme, match["host"].lower(), user or None, password or None, port, _params(params), headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_render_params(self.params)}"
        userinfo = ""
        if self.user:
            userinfo = self.user + (f":{self.password}" if self.password else "") + "@"
        port = f":{self.port}" if self.port else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{_render_params(self.params)}{headers}"


@dataclass
class Address:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Refer-To, Route…"""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip()
        if "<" in text:
            head, _, rest = text.partition("<")
            uri, close, tail = rest.partition(">")
            if not close:
                raise SipSyntaxError(f"unclosed '<' in address: {text[:80]!r}")
            display = head.strip().strip('"').strip() or None
            return cls(SipUri.parse(uri), display, _params(tail))
        # addr-spec: parameters after the URI belong to the header, not the URI (RFC 3261 §20.10)
        uri, _, params = text.partition(";")
        return cls(SipUri.parse(uri), None, _params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{_render_params(self.params)}"


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        protocol, _, rest = text.strip().partition(" ")
        parts = [p.strip() for p in protocol.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0" or not parts[2]:
            raise SipSyntaxError(f"bad Via protocol: {text[:80]!r}")
        sent_by, _, params = rest.strip().partition(";")
        match = _HOSTPORT.match(sent_by.strip())
        if not match:
            raise SipSyntaxError(f"bad Via sent-by: {text[:80]!r}")
        return cls(parts[2].upper(), match["host"].lower(), int(match["port"]) if match["port"] else None,
                   _params(params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_render_params(self.params)}"


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets (Via, Contact, Route…)."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]
