"""SIP messages (RFC 3261 §7, §20): parse bytes into a Request or Response, and back.

Parsing never raises anything but SipParseError. When a request's start line and the headers needed to
answer (Via, From, To, Call-ID, CSeq) could be read, the error carries them, so the UA can send the
400 Bad Request the RFC asks for; otherwise the message is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from appliance.sip.uri import Address, SipSyntaxError, SipUri, Via, split_commas

MAX_MESSAGE = 65_535
MAX_HEADERS = 200
COMPACT = {"i": "Call-ID", "m": "Contact", "f": "From", "t": "To", "v": "Via", "l": "Content-Length",
           "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding", "o": "Event",
           "r": "Refer-To", "b": "Referred-By", "x": "Session-Expires", "u": "Allow-Events"}
CANONICAL = {name.lower(): name for name in (
    "Call-ID", "CSeq", "WWW-Authenticate", "Max-Forwards", "Content-Length", "Content-Type", "Record-Route",
    "Proxy-Authenticate", "Proxy-Authorization", "Authorization", "Allow", "Supported", "User-Agent", "Expires",
    "Contact", "From", "To", "Via", "Route", "Event", "Refer-To", "Referred-By", "Subscription-State", "Require",
    "Unsupported", "Retry-After", "Accept", "Min-Expires", "Server", "Session-Expires")}
METHOD = re.compile(r"^[A-Za-z0-9.!%*_+`'~\-]+$")
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def canonical(name: str) -> str:
    lower = name.strip().lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return CANONICAL.get(lower, "-".join(p.capitalize() for p in lower.split("-")))


@dataclass
class Message:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str) -> str | None:
        name = canonical(name)
        return next((v for k, v in self.headers if k == name), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split (Via, Contact, Route, …)."""
        name = canonical(name)
        values = [v for k, v in self.headers if k == name]
        if name in ("Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require"):
            return [part for v in values for part in split_commas(v)]
        return values

    def set(self, name: str, value: str) -> None:
        name = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != name] + [(name, value)]

    def add(self, name: str, value: str, first: bool = False) -> None:
        header = (canonical(name), value)
        if first:
            self.headers.insert(0, header)
        else:
            self.headers.append(header)

    def remove(self, name: str) -> None:
        name = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("CSeq") or "").partition(" ")
        return int(number), method.strip().upper()

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.get_all("Via")]

    @property
    def from_(self) -> Address:
        return Address.parse(self.get("From") or "")

    @property
    def to(self) -> Address:
        return Address.parse(self.get("To") or "")

    def _head(self) -> str:
        raise NotImplementedError

    def encode(self) -> bytes:
        lines = [self._head()]
        lines += [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class Request(Message):
    method: str = "OPTIONS"
    uri: SipUri = field(default_factory=lambda: SipUri("sip", "invalid"))

    def _head(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"


@dataclass
class Response(Message):
    status: int = 200
    reason: str = "OK"

    def _head(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"


class SipParseError(SipSyntaxError):
    """Malformed message. ``request`` is set when enough was read to answer it with 400."""

    def __init__(self, reason: str, request: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


def parse(data: bytes, stream: bool = False) -> Request | Response:
    """One whole message (a UDP datagram, or one framed from a stream)."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no empty line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")  # still answerable; RFC 3261 says UTF-8, peers are not always right
    lines = _unfold(text.lstrip("\r\n").replace("\r\n", "\n").split("\n"))
    if not lines or not lines[0]:
        raise SipParseError("empty message")
    start = lines[0]
    message: Request | Response
    parts = start.split(" ", 2)
    if start.startswith("SIP/"):
        if len(parts) < 2 or parts[0] != "SIP/2.0" or not re.fullmatch(r"[1-6]\d\d", parts[1]):
            raise SipParseError(f"bad status line: {start[:80]!r}")
        message = Response(status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
    else:
        if len(parts) != 3 or not METHOD.match(parts[0]):
            raise SipParseError(f"bad request line: {start[:80]!r}")
        if parts[2] != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version {parts[2][:20]!r}")
        try:
            uri = SipUri.parse(parts[1])
        except SipSyntaxError:
            uri = None
        message = Request(method=parts[0].upper(), uri=uri or SipUri("sip", "invalid"))
        if uri is None:
            _headers(message, lines[1:])
            raise SipParseError(f"bad Request-URI {parts[1][:80]!r}", _answerable(message))
    _headers(message, lines[1:])
    _check(message, body, stream)
    return message


def _unfold(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def _headers(message: Message, lines: list[str]) -> None:
    if len(lines) > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} header lines")
    bad = None
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            bad = bad or line  # read on: the headers after it may still let us answer 400
            continue
        message.headers.append((canonical(name), value.strip()))
    if bad is not None:
        raise SipParseError(f"bad header line: {bad[:80]!r}",
                            _answerable(message) if isinstance(message, Request) else None)


def _answerable(request: Request) -> Request | None:
    return request if all(request.get(h) for h in REQUIRED) else None


def _check(message: Request | Response, body: bytes, stream: bool) -> None:
    request = message if isinstance(message, Request) else None
    answer = _answerable(request) if request is not None else None
    missing = [h for h in REQUIRED if not message.get(h)]
    if missing:
        raise SipParseError(f"missing {', '.join(missing)}", None)
    try:
        number, method = message.cseq
        vias = message.vias
        message.from_, message.to  # noqa: B018 - parsed to validate them
    except (ValueError, SipSyntaxError) as exc:
        raise SipParseError(f"malformed header: {exc}", answer) from None
    if not 0 <= number < 2**31 or not method:
        raise SipParseError("bad CSeq", answer)
    if request is not None and method != request.method and request.method not in ("ACK", "CANCEL"):
        raise SipParseError(f"CSeq method {method} does not match {request.method}", answer)
    if not vias:
        raise SipParseError("missing Via", None)
    length_text = message.get("Content-Length")
    if length_text is None:
        if stream:
            raise SipParseError("Content-Length is required over stream transports", answer)
        message.body = body
        return
    if not length_text.isdigit():
        raise SipParseError(f"bad Content-Length {length_text[:20]!r}", answer)
    length = int(length_text)
    if length > len(body):
        raise SipParseError(f"Content-Length {length} exceeds the {len(body)} bytes of body", answer)
    message.body = body[:length]  # RFC 3261 §18.3: extra datagram bytes are discarded


def bad_request(request: Request, reason: str) -> Response:
    """The 400 for a malformed but answerable request (RFC 3261 §8.2.6)."""
    return response_to(request, 400, "Bad Request - " + re.sub(r"[\x00-\x1f\x7f]", " ", reason)[:100])


def response_to(request: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response copying Via, From, To (adding a tag), Call-ID and CSeq (RFC 3261 §8.2.6.2)."""
    response = Response(status=status, reason=reason)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for k, v in request.headers:
            if k == name:
                if k == "To" and to_tag and ";tag=" not in v.replace(" ", "").lower():
                    v = f"{v};tag={to_tag}"
                response.headers.append((k, v))
    return response
