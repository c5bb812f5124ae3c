"""SIP message parsing and serialisation: RFC 3261 examples, compact and folded forms, answerable errors, and a
fuzz run where nothing but SipParseError may come out."""

from __future__ import annotations

import random

import pytest

from appliance.sip.message import Request, Response, SipParseError, bad_request, parse, response_to
from appliance.sip.uri import Address, SipUri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: Bob <sip:bob@biloxi.example.com>\r\n'
    b'From: "Alice A." <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_parses_the_rfc_invite() -> None:
    message = parse(INVITE)
    assert isinstance(message, Request) and message.method == "INVITE"
    assert message.uri.user == "bob" and message.uri.host == "biloxi.example.com"
    assert message.cseq == (314159, "INVITE") and message.body == b"v=0\n"
    assert message.from_.display == "Alice A." and message.from_.tag == "1928301774"
    assert message.to.tag is None and message.vias[0].branch == "z9hG4bK776asdhds"
    again = parse(message.encode())
    assert again.headers == message.headers and again.body == message.body


def test_compact_folded_and_comma_separated_headers() -> None:
    text = (
        b"OPTIONS sip:[2001:db8::10]:5070;transport=tcp SIP/2.0\r\n"
        b"v: SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bKa,\r\n"
        b"  SIP/2.0/UDP proxy.example.com;branch=z9hG4bKb;received=192.0.2.4\r\n"
        b"f: <sip:carol@example.com>;tag=x\r\nt: sip:dave@example.com\r\ni: c1\r\n"
        b"CSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    message = parse(text, stream=True)
    assert isinstance(message, Request)
    assert message.uri.host == "[2001:db8::10]" and message.uri.port == 5070
    assert message.uri.params == {"transport": "tcp"}
    assert [v.host for v in message.vias] == ["[2001:db8::9]", "proxy.example.com"]
    assert message.vias[1].params["received"] == "192.0.2.4"
    assert message.call_id == "c1" and message.to.uri.user == "dave"


def test_response_and_extra_datagram_bytes() -> None:
    text = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=1\r\n"
            b"To: <sip:b@b>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INVITE\r\nContent-Length: 2\r\n\r\nokTRAILING")
    message = parse(text)
    assert isinstance(message, Response) and message.status == 180 and message.body == b"ok"


@pytest.mark.parametrize(("mutate", "reason", "answerable"), [
    (lambda t: t.replace("CSeq: 314159 INVITE", "CSeq: x INVITE"), "malformed header", True),
    (lambda t: t.replace("CSeq: 314159 INVITE", "CSeq: 1 BYE"), "does not match", True),
    (lambda t: t.replace("Content-Length: 4", "Content-Length: 400"), "exceeds", True),
    (lambda t: t.replace("Content-Length: 4", "Content-Length: -1"), "bad Content-Length", True),
    (lambda t: t.replace("sip:bob@biloxi.example.com SIP", "bob SIP"), "bad Request-URI", True),
    (lambda t: t.replace("Max-Forwards: 70", "Max Forwards 70"), "bad header line", True),
    (lambda t: t.replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", ""), "missing Call-ID", False),
    (lambda t: t.replace("SIP/2.0\r\n", "SIP/3.0\r\n", 1), "unsupported SIP version", False),
    (lambda t: t.replace("\r\n\r\n", "\r\n"), "no empty line", False),
])
def test_malformed_requests(mutate: object, reason: str, answerable: bool) -> None:
    assert callable(mutate)
    with pytest.raises(SipParseError, match=reason) as err:
        parse(mutate(INVITE.decode()).encode())
    assert (err.value.request is not None) == answerable
    if err.value.request is not None:
        response = bad_request(err.value.request, err.value.reason).encode()
        assert response.startswith(b"SIP/2.0 400 Bad Request - ")
        assert b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n" in response


def test_tcp_needs_content_length() -> None:
    text = INVITE.decode().replace("Content-Length: 4\r\n", "").encode()
    assert parse(text).body == b"v=0\n"
    with pytest.raises(SipParseError, match="required over stream"):
        parse(text, stream=True)


def test_response_to_copies_and_tags() -> None:
    request = parse(INVITE)
    assert isinstance(request, Request)
    response = response_to(request, 200, "OK", to_tag="abc")
    assert response.to.tag == "abc" and response.from_.tag == "1928301774"
    assert response.get("Via") == request.get("Via") and response.cseq == (314159, "INVITE")


def test_uris_and_addresses() -> None:
    uri = SipUri.parse("sips:alice:secret@Atlanta.Example.com:5061;transport=tls;lr?subject=hi")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "alice", "secret",
                                                                          "atlanta.example.com", 5061)
    assert uri.params == {"transport": "tls", "lr": None} and uri.headers == "subject=hi"
    assert str(SipUri.parse(str(uri))) == str(uri)
    addr = Address.parse("sip:bob@example.com;tag=88")  # addr-spec: the tag is the header's
    assert addr.tag == "88" and addr.uri.params == {}
    assert SipUri.parse("tel:+15551234;phone-context=x").user == "+15551234"


def test_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(3261)
    seeds = [INVITE, parse(INVITE).encode(), b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
             b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n"]
    alphabet = b"\r\n:;<>@\"= ,\t/\x00\xff0123456789SIPsip"
    parsed = failed = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op, at = rng.randrange(4), rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[at:at + rng.randint(1, 20)]
            elif op == 1:
                data[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
            elif op == 2 and at < len(data):
                data[at] = rng.randrange(256)
            else:
                data = data[:at]
        try:
            message = parse(bytes(data))
            parse(message.encode())  # whatever parses must serialise to something that parses
            parsed += 1
        except SipParseError as exc:
            failed += 1
            if exc.request is not None:  # every answerable error gets a 400 that at least frames as SIP
                answer = bad_request(exc.request, exc.reason).encode()
                assert answer.startswith(b"SIP/2.0 400 ") and answer.endswith(b"Content-Length: 0\r\n\r\n")
    assert parsed > 100 and failed > 1000
