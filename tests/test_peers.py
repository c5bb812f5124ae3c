"""The real peers of tests/peers.py, proved without the appliance's call stack: REGISTER with our digest code at
Kamailio (MD5 and SHA-256, nc counting, wrong password, proxy auth, no qop); baresip calling a SIPp echo and recording
the prompt it hears back; two baresips talking G.722; a call from SIPp through Kamailio to baresip registered
there with digest auth."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from appliance.sip import digest
from appliance.sip.digest import DigestClient
from appliance.sip.message import Request, Response, parse
from appliance.sip.uri import SipUri
from tests.support.peers import BARESIP, KAMAILIO, SIPP, Account, Baresip, Kamailio, free_port
from tests.support.sipp import UAS_ECHO

SCENARIOS = Path(__file__).parent / "fixtures" / "sip"

PROMPT = Path("/usr/share/asterisk/sounds/en/agent-pass.wav")
needs_kamailio = pytest.mark.skipif(KAMAILIO is None, reason="needs kamailio (Debian kamailio, make test installs it)")
needs_baresip = pytest.mark.skipif(BARESIP is None or SIPP is None,
                                   reason="needs baresip and sipp (Debian baresip-core, sip-tester; make test)")


class Client:
    """A bare UDP UAC on loopback: one request out, its final response back."""

    def __init__(self, server: tuple[str, int], user: str) -> None:
        self.server, self.user = server, user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.call_id = secrets.token_hex(8) + "@test"
        self.cseq = 0

    def request(self, method: str, uri: str, to: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> Request:
        self.cseq += 1
        request = Request(method=method, uri=SipUri.parse(uri), body=body)
        request.add("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport")
        request.add("From", f"<sip:{self.user}@127.0.0.1>;tag={secrets.token_hex(4)}")
        request.add("To", f"<{to}>")
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{self.cseq} {method}")
        request.add("Max-Forwards", "70")
        request.add("Contact", f"<sip:{self.user}@127.0.0.1:{self.port}>")
        for name, value in (headers or {}).items():
            request.add(name, value)
        return request

    def send(self, request: Request, timeout: float = 5.0) -> Response:
        self.sock.sendto(request.encode(), self.server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = parse(self.sock.recv(65535))
            except TimeoutError:
                continue
            if isinstance(message, Response) and message.status >= 200 and message.call_id == request.call_id:
                return message
        raise AssertionError(f"no final response to {request.method} within {timeout} s")

    def register(self, registrar: Kamailio, headers: dict[str, str] | None = None) -> Response:
        aor = f"sip:{self.user}@127.0.0.1"
        return self.send(self.request("REGISTER", registrar.uri, aor, {"Expires": "60", **(headers or {})}))

    def close(self) -> None:
        self.sock.close()


def authorization(response: Response, client: DigestClient, method: str, uri: str, body: bytes = b"") -> dict[str, str]:
    challenge_header, credentials_header = digest.HEADERS[response.status]
    challenge = digest.choose(digest.parse_challenges(response.get_all(challenge_header)))
    return {credentials_header: str(client.answer(challenge, method, uri, body))}


@needs_kamailio
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_kamailio_register_with_digest(tmp_path: Path, algorithm: str) -> None:
    with Kamailio(tmp_path, {"alice": "s3cret:x", "bob": "other"}, algorithm=algorithm) as kamailio:
        client = Client(kamailio.address, "alice")
        try:
            first = client.register(kamailio)
            assert first.status == 401
            [challenge] = digest.parse_challenges(first.get_all("WWW-Authenticate"))
            assert challenge.algorithm == algorithm and challenge.realm == "127.0.0.1"
            assert challenge.qop == ("auth",)

            alice = DigestClient("alice", "s3cret:x")
            accepted = client.register(kamailio, authorization(first, alice, "REGISTER", kamailio.uri))
            assert accepted.status == 200, accepted.reason
            [contact] = accepted.get_all("Contact")
            assert f"127.0.0.1:{client.port}" in contact and "expires=60" in contact

            again = authorization(first, alice, "REGISTER", kamailio.uri)  # same nonce, nc=00000002
            assert "nc=00000002" in again["Authorization"]
            assert client.register(kamailio, again).status == 200
            replayed = client.register(kamailio, again)  # nc not incremented: a replay
            assert replayed.status in (401, 403)

            wrong = client.register(kamailio, authorization(first, DigestClient("alice", "guess"), "REGISTER",
                                                            kamailio.uri))
            assert wrong.status in (401, 403)
            impostor = client.register(kamailio, authorization(first, DigestClient("bob", "other"), "REGISTER",
                                                               kamailio.uri))
            assert impostor.status in (401, 403)  # bob's password, but From/To say alice
        finally:
            client.close()


@needs_kamailio
def test_kamailio_proxy_auth_for_calls_without_qop(tmp_path: Path) -> None:
    with Kamailio(tmp_path, {"alice": "pw"}, algorithm="SHA-256", qop="", auth_calls=True) as kamailio:
        client = Client(kamailio.address, "alice")
        alice = DigestClient("alice", "pw")
        try:
            first = client.register(kamailio)
            assert digest.parse_challenges(first.get_all("WWW-Authenticate"))[0].qop == ()
            assert client.register(kamailio, authorization(first, alice, "REGISTER", kamailio.uri)).status == 200

            target = f"sip:carol@127.0.0.1:{kamailio.port}"
            sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
            invite = client.send(client.request("INVITE", target, target, {"Content-Type": "application/sdp"}, sdp))
            assert invite.status == 407
            credentials = authorization(invite, alice, "INVITE", target, sdp)
            assert "Proxy-Authorization" in credentials and "nc=" not in credentials["Proxy-Authorization"]
            retry = client.send(client.request("INVITE", target, target,
                                               {"Content-Type": "application/sdp", **credentials}, sdp))
            assert retry.status == 404  # authenticated; carol is simply not registered
        finally:
            client.close()


def sipp(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    assert SIPP is not None
    return subprocess.Popen([SIPP, "-i", "127.0.0.1", "-mi", "127.0.0.1", "-rtp_echo", "-m", "1", "-nostdin",
                             "-timeout", "25s", "-timeout_error", *args],
                            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode:
        print(err.decode(errors="replace")[-2000:])
    return proc.returncode


def assert_hears_prompt(recording: Path, min_seconds: float) -> None:
    """The recording holds the prompt: long enough, not silent, and matching it once aligned."""
    heard, rate = sf.read(recording, dtype="float32")
    original, original_rate = sf.read(PROMPT, dtype="float32")
    prompt = np.interp(np.arange(int(len(original) * rate / original_rate)) / rate,
                       np.arange(len(original)) / original_rate, original)
    assert len(heard) / rate >= min_seconds
    assert np.sqrt(np.mean(heard**2)) > 0.02
    size = len(heard) + len(prompt)
    spectrum = np.fft.rfft(heard, size) * np.conj(np.fft.rfft(prompt, size))
    lag = int(np.argmax(np.fft.irfft(spectrum, size)))
    lag = lag - size if lag > len(heard) else lag
    start, end = max(lag, 0), min(lag + len(prompt), len(heard))
    assert end - start > 0.8 * len(prompt), f"prompt found at lag {lag} only partly in the recording"
    correlation = np.corrcoef(heard[start:end], prompt[start - lag:end - lag])[0, 1]
    assert correlation > 0.9, f"recording matches the prompt with r={correlation:.3f} at lag {lag}"


# SIPp's built-in "uas" scenario, minus its final 4 s timewait.
UAS = UAS_ECHO.read_text()


@needs_baresip
def test_baresip_calls_sipp_echo_and_records_the_prompt(tmp_path: Path) -> None:
    scenario = tmp_path / "uas.xml"
    scenario.write_text(UAS)
    port, media = free_port(), free_port(tcp_too=False, also=(2,))
    uas = sipp("-sf", str(scenario), "-p", str(port), "-mp", str(media), cwd=tmp_path)
    try:
        with Baresip(tmp_path / "baresip", PROMPT, pad=0.5) as phone:
            phone.dial(f"sip:echo@127.0.0.1:{port}")
            established = phone.wait_event("CALL_ESTABLISHED", 10)
            assert established["peeruri"] == f"sip:echo@127.0.0.1:{port}"
            phone.send_dtmf("1")
            closed = phone.wait_event("CALL_CLOSED", 10)  # the source WAV ended: baresip hangs up
            assert "end of file" in closed.get("param", "")
            [recording] = phone.recordings()
        assert sf.info(recording).samplerate == 8000  # PCMU, the only codec SIPp offers
        assert finish(uas) == 0
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    assert_hears_prompt(recording, min_seconds=3.0)


@pytest.mark.skipif(BARESIP is None, reason="needs baresip (Debian baresip-core, make test installs it)")
def test_two_baresips_talk_g722(tmp_path: Path) -> None:
    wideband = ("G722",)
    with Baresip(tmp_path / "alice", PROMPT, Account("alice", answer="auto", codecs=wideband), pad=1.0) as alice, \
            Baresip(tmp_path / "bob", PROMPT, Account("bob", codecs=wideband), pad=0.5) as bob:
        bob.dial(alice.contact)
        assert bob.wait_event("CALL_ESTABLISHED", 10)["peeruri"] == alice.contact
        bob.wait_event("CALL_CLOSED", 10)  # bob's prompt ended: he hangs up
        alice.wait_event("CALL_CLOSED", 5)
        heard = [alice.recordings()[0], bob.recordings()[0]]
    for recording in heard:
        assert sf.info(recording).samplerate == 16000
        assert_hears_prompt(recording, min_seconds=3.0)


UAC_THROUGH_PROXY = (SCENARIOS / "uac_through_proxy.xml").read_text()


@needs_kamailio
@needs_baresip
def test_sipp_calls_baresip_registered_at_kamailio(tmp_path: Path) -> None:
    scenario = tmp_path / "uac.xml"
    scenario.write_text(UAC_THROUGH_PROXY)
    with Kamailio(tmp_path / "kamailio", {"alice": "pw4alice"}) as kamailio:
        account = Account("alice", f"127.0.0.1:{kamailio.port}", "pw4alice", register=True, answer="auto")
        with Baresip(tmp_path / "baresip", PROMPT, account, pad=3.0) as phone:
            phone.wait_registered(10)
            media = free_port(tcp_too=False, also=(2,))
            port = free_port()
            uac = sipp("-sf", str(scenario), "-s", "alice", "-p", str(port), "-mp", str(media),
                       f"127.0.0.1:{kamailio.port}", cwd=tmp_path)
            try:
                established = phone.wait_event("CALL_ESTABLISHED", 10)  # answered at once: no CALL_INCOMING
                assert established["direction"] == "incoming"
                assert established["peeruri"] == f"sip:sipp@127.0.0.1:{port}"
                closed = phone.wait_event("CALL_CLOSED", 10)  # SIPp's BYE, routed by Kamailio's Record-Route
                assert "reset by peer" in closed.get("param", "")  # libre's words for "the peer sent BYE"
                assert finish(uac) == 0
            finally:
                if uac.poll() is None:
                    uac.kill()
                    uac.wait()
            [recording] = phone.recordings()
    log = kamailio.log_text()
    assert "ERROR" not in log, log[-2000:]
    assert_hears_prompt(recording, min_seconds=3.0)
