"""Digest authentication against the RFC examples (RFC 2617 §3.5, RFC 7616 §3.9), both ways: build then verify."""

from __future__ import annotations

import pytest

from appliance.errors import ApplianceError
from appliance.sip import digest
from appliance.sip.digest import Challenge, Credentials, DigestClient, DigestError

RFC2617 = ('Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
           'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_rfc2617_example() -> None:
    [challenge] = digest.parse_challenges(RFC2617)
    assert challenge == Challenge("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "MD5",
                                  ("auth", "auth-int"), "5ccc069c403ebaf9f0171e9517f40e41")
    creds = digest.authorize(challenge, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", cnonce="0a4f113b")
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert creds.qop == "auth" and creds.nc == 1
    text = str(creds)
    assert 'response="6629fae49393a05397450978507c4ef1"' in text and "nc=00000001" in text and "qop=auth" in text
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in text and 'cnonce="0a4f113b"' in text
    assert Credentials.parse(text) == creds
    assert digest.verify(creds, "GET", password="Circle Of Life", challenge=challenge)


def test_rfc2617_authorization_header_parses_and_verifies() -> None:
    value = ('Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
             'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
             'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    creds = Credentials.parse(value)
    assert creds.algorithm == "MD5" and creds.nc == 1
    assert digest.verify(creds, "GET", password="Circle Of Life")
    assert digest.verify(creds, "GET", secret_ha1=digest.ha1("Mufasa", "testrealm@host.com", "Circle Of Life"))
    assert not digest.verify(creds, "GET", password="Circle of Life")
    assert not digest.verify(creds, "POST", password="Circle Of Life")


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    header = (f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
              f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')
    [challenge] = digest.parse_challenges(header)
    assert challenge.algorithm == algorithm and challenge.qop == ("auth", "auth-int")
    creds = digest.authorize(challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)
    assert creds.response == expected
    assert digest.verify(Credentials.parse(str(creds)), "GET", password="Circle of Life", challenge=challenge)


def test_rfc7616_sha512_256_with_userhash() -> None:
    """RFC 7616 §3.9.2 with erratum 4897 (the printed hashes came from a draft SHA-512/256)."""
    challenge = Challenge("api@example.org", "5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", "SHA-512-256",
                          ("auth",), "HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", userhash=True)
    creds = digest.authorize(challenge, "J\u00e4s\u00f8n Doe", "Secret, or not?", "GET", "/doe.json",
                             cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v")
    assert creds.username == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    assert creds.response == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"
    assert digest.parse_challenges(str(challenge)) == [challenge]


def test_quoted_strings_with_commas_and_escapes_and_several_challenges() -> None:
    header = ('Basic realm="legacy, old", Digest realm="voice \\"lab\\", floor 2", nonce="a,b", algorithm=MD5, '
              'qop="auth", stale=TRUE, Digest realm="voice", nonce="n2", algorithm=sha-256, qop="auth",'
              'Digest realm="voice", nonce="n3", algorithm=AKAv1-MD5')
    challenges = digest.parse_challenges(header)
    assert [c.nonce for c in challenges] == ["a,b", "n2", "n3"]
    assert challenges[0].realm == 'voice "lab", floor 2' and challenges[0].stale
    assert challenges[1].algorithm == "SHA-256"
    assert digest.choose(challenges).nonce == "n2"
    rendered = str(challenges[0])
    assert digest.parse_challenges(rendered) == [challenges[0]]
    # separate header lines, as SIP usually sends them
    assert digest.choose(digest.parse_challenges([str(challenges[2]), str(challenges[1])])).algorithm == "SHA-256"


def test_strongest_supported_is_chosen() -> None:
    def make(algorithm: str) -> Challenge:
        return Challenge("r", algorithm, algorithm, ("auth",))
    assert digest.choose(map(make, ["MD5", "SHA-512-256", "SHA-256"])).algorithm == "SHA-512-256"
    assert digest.choose(map(make, ["MD5-sess", "MD5"])).algorithm == "MD5"
    assert digest.choose(map(make, ["MD5-sess", "SHA-256-sess"])).algorithm == "SHA-256-sess"


def test_unsupported_or_malformed_challenges_raise_clear_errors() -> None:
    with pytest.raises(DigestError, match="unsupported Digest challenge only.*AKAv1-MD5"):
        digest.choose(digest.parse_challenges('Digest realm="r", nonce="n", algorithm=AKAv1-MD5'))
    with pytest.raises(DigestError, match="qop auth-conf"):
        digest.choose(digest.parse_challenges('Digest realm="r", nonce="n", qop="auth-conf"'))
    with pytest.raises(DigestError, match="no Digest challenge"):
        digest.choose(digest.parse_challenges('Basic realm="r"'))
    with pytest.raises(DigestError, match="no nonce"):
        digest.parse_challenges('Digest realm="r", qop="auth"')
    with pytest.raises(DigestError, match="unterminated"):
        digest.parse_challenges('Digest realm="r", nonce="n')
    with pytest.raises(DigestError, match="twice"):
        digest.parse_challenges('Digest realm="r", nonce="n", nonce="m"')
    with pytest.raises(DigestError, match="before any scheme"):
        digest.parse_challenges('realm="r", nonce="n"')
    with pytest.raises(ApplianceError, match="nc="):
        Credentials.parse('Digest username="u", realm="r", nonce="n", uri="sip:x", response="0", qop=auth, '
                          'nc=1, cnonce="c"')
    with pytest.raises(DigestError, match="unsupported"):
        digest.authorize(Challenge("r", "n", "SHA-1"), "u", "p", "REGISTER", "sip:x")


def test_round_trip_sip_register_each_algorithm() -> None:
    for algorithm in digest.ALGORITHMS:
        challenge = digest.new_challenge("voice.lab", algorithm, opaque="op")
        creds = DigestClient("alice", "s3cret, \"really\"").answer(challenge, "REGISTER", "sip:voice.lab")
        parsed = Credentials.parse(str(creds))
        assert parsed == creds
        assert digest.verify(parsed, "REGISTER", password='s3cret, "really"', challenge=challenge), algorithm
        assert not digest.verify(parsed, "REGISTER", password="wrong", challenge=challenge), algorithm
        other = digest.new_challenge("voice.lab", algorithm, opaque="op")
        assert not digest.verify(parsed, "REGISTER", password='s3cret, "really"', challenge=other), algorithm


def test_nc_increments_per_nonce_and_restarts_on_a_new_one() -> None:
    client = DigestClient("alice", "pw")
    first = digest.new_challenge("voice.lab")
    answers = [client.answer(first, "REGISTER", "sip:voice.lab") for _ in range(3)]
    assert [a.nc for a in answers] == [1, 2, 3]
    assert "nc=00000003" in str(answers[-1])
    assert len({a.cnonce for a in answers}) == 3
    assert client.answer(digest.new_challenge("voice.lab"), "REGISTER", "sip:voice.lab").nc == 1
    assert client.answer(first, "REGISTER", "sip:voice.lab").nc == 4
    big = DigestClient("alice", "pw", {first.nonce: 0x1ff})
    assert "nc=00000200" in str(big.answer(first, "INVITE", "sip:bob@voice.lab"))


def test_auth_int_covers_the_body() -> None:
    challenge = digest.new_challenge("voice.lab", "SHA-256", qop=("auth-int",))
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    creds = digest.authorize(challenge, "bob", "pw", "INVITE", "sip:alice@voice.lab", body=body)
    assert creds.qop == "auth-int"
    assert digest.verify(creds, "INVITE", password="pw", body=body, challenge=challenge)
    assert not digest.verify(creds, "INVITE", password="pw", body=body + b"a=x\r\n", challenge=challenge)
    both = digest.new_challenge("voice.lab", qop=("auth", "auth-int"))
    assert digest.authorize(both, "bob", "pw", "INVITE", "sip:a@b", qop="auth-int").qop == "auth-int"
    with pytest.raises(DigestError, match="not offered"):
        digest.authorize(challenge, "bob", "pw", "INVITE", "sip:a@b", qop="auth")


def test_rfc2069_challenge_without_qop() -> None:
    """RFC 2069 §2.4 with its erratum (the printed response e966c932… is wrong)."""
    challenge = Challenge("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093")
    creds = digest.authorize(challenge, "Mufasa", "CircleOfLife", "GET", "/dir/index.html")
    assert creds.response == "1949323746fe6a43ef61f9606e7febea"
    assert creds.qop is None and creds.cnonce is None and creds.nc is None
    assert "nc=" not in str(creds) and "qop" not in str(creds)
    assert digest.verify(Credentials.parse(str(creds)), "GET", password="CircleOfLife", challenge=challenge)
    with pytest.raises(DigestError, match="not offered"):
        digest.authorize(challenge, "Mufasa", "CircleOfLife", "GET", "/", qop="auth")
