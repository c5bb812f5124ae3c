"""SIP dialogs (RFC 3261 §12): the state two user agents share for one call, and requests made within it.

A dialog is identified by Call-ID, local tag and remote tag. It keeps the remote target (the peer's
Contact), the route set (Record-Route, in the right order for each side) and both CSeq counters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from appliance.sip.message import Request, Response
from appliance.sip.uri import Address, SipUri, Via

DialogId = tuple[str, str, str]  # Call-ID, local tag, remote tag


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)  # the RFC 3261 magic cookie (§8.1.1.7)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: Address  # our From/To value without its tag
    remote: Address
    remote_target: SipUri
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    transport: str = "UDP"

    @property
    def id(self) -> DialogId:
        return self.call_id, self.local_tag, self.remote_tag

    @classmethod
    def as_uas(cls, request: Request, local_tag: str, transport: str) -> Dialog:
        """The dialog a 2xx to ``request`` creates on the answering side (§12.1.1)."""
        remote = request.from_
        return cls(request.call_id, local_tag, remote.tag or "", _untagged(request.to), _untagged(remote),
                   _contact_uri(request), request.get_all("Record-Route"), local_seq=0,
                   remote_seq=request.cseq[0], transport=transport)

    @classmethod
    def as_uac(cls, request: Request, response: Response, transport: str) -> Dialog:
        """The dialog a 2xx to our ``request`` creates on the calling side (§12.1.2): routes reversed."""
        return cls(request.call_id, request.from_.tag or "", response.to.tag or "", _untagged(request.from_),
                   _untagged(response.to), _contact_uri(response), list(reversed(response.get_all("Record-Route"))),
                   local_seq=request.cseq[0], transport=transport)

    def accepts(self, request: Request) -> bool:
        """§12.2.2: a request whose CSeq is lower than the last one is out of order (→ 500); ACK and CANCEL
        reuse the INVITE's number."""
        number = request.cseq[0]
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and number <= self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def request(self, method: str, contact: str, via: Via, body: bytes = b"",
                content_type: str | None = None) -> Request:
        """A new request within the dialog (§12.2.1.1), with a fresh branch and the next CSeq (ACK reuses it)."""
        if method != "ACK":
            self.local_seq += 1
        target, routes = self.remote_target, list(self.route_set)
        if routes and "lr" not in Address.parse(routes[0]).uri.params:  # strict router: it becomes the target
            target = Address.parse(routes.pop(0)).uri
            routes.append(f"<{self.remote_target}>")
        request = Request(method=method, uri=target)
        via.params["branch"] = new_branch()
        request.add("Via", str(via))
        request.add("Max-Forwards", "70")
        request.add("From", f"{self.local};tag={self.local_tag}")
        request.add("To", f"{self.remote};tag={self.remote_tag}")
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{self.local_seq} {method}")
        for route in routes:
            request.add("Route", route)
        request.add("Contact", contact)
        if body:
            request.add("Content-Type", content_type or "application/sdp")
            request.body = body
        return request


def _untagged(address: Address) -> Address:
    return Address(address.uri, address.display, {k: v for k, v in address.params.items() if k != "tag"})


def _contact_uri(message: Request | Response) -> SipUri:
    contacts = message.get_all("Contact")
    if contacts:
        return Address.parse(contacts[0]).uri
    return message.from_.uri if isinstance(message, Request) else message.to.uri
