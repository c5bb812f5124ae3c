"""More of the user agent against SIPp on loopback: CANCEL on both sides of the 200 (RFC 3261 §9, RFC 6026),
hold and resume by re-INVITE (RFC 3264 §8.4), INFO key presses, calls the phone places to a SIPp UAS (answered
with our RTP echoed back, busy, nobody there), requests refused without a call (481, 488, 404), and a call over
TCP. SIPp's message trace (-trace_msg) shows every message on the wire; a tiny app records what the call gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio.queue import PcmQueue
from appliance.bot.calls import announcement_factory
from appliance.calls import CallApp, CallAppFactory, CallControl, CallInfo
from appliance.sip.message import Request, Response, parse
from appliance.sip.phone import CallFailed, Phone, PhoneOptions, Router
from appliance.sip.sdp import parse_sdp
from appliance.sip.transaction import Timers
from appliance.voice.stack import VoiceStack
from tests.support.peers import free_port

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "fixtures" / "sip"
RTP_PORTS = (33000, 33200)
pytestmark = pytest.mark.skipif(SIPP is None, reason="needs sipp (Debian sip-tester, installed by make test)")


# ---- the application side: what a call gave its app

@dataclass
class Heard:
    info: CallInfo
    answered: bool = False
    frames: int = 0
    digits: list[str] = field(default_factory=list)
    closed: bool = False


class RecordingApp:
    """A CallApp that only writes down what it is given."""

    def __init__(self, heard: Heard) -> None:
        self.heard = heard

    async def answered(self) -> None:
        self.heard.answered = True

    async def feed(self, samples: np.ndarray) -> None:
        self.heard.frames += 1

    async def dtmf(self, digit: str) -> None:
        self.heard.digits.append(digit)

    async def close(self) -> None:
        self.heard.closed = True


def recording_router(heard: list[Heard], numbers: tuple[str, ...] = ("bot",)) -> Router:
    """Calls to ``numbers`` get a RecordingApp (appended to ``heard``); any other number gets 404."""
    def route(info: CallInfo) -> CallAppFactory | None:
        async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
            heard.append(Heard(info))
            return RecordingApp(heard[-1])
        return make if info.called in numbers else None
    return route


async def _never(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
    raise AssertionError("no app is made for a call that was not answered")


@contextlib.asynccontextmanager
async def running(router: Router, **options: Any) -> AsyncIterator[Phone]:
    phone = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=RTP_PORTS, **options), router)
    await phone.start()
    try:
        yield phone
    finally:
        await phone.stop()


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# ---- SIPp, and what its trace says went over the wire

TRACE_ENTRY = re.compile(rb"^-{20,} [^\n]*\n(UDP|TCP) message (sent|received) [(\[](\d+)[)\]] bytes ?:\n\n", re.M)


@dataclass
class Sipp:
    code: int
    stderr: str
    sent: list[Request | Response]  # by SIPp, in order
    received: list[Request | Response]  # by SIPp: what the phone sent
    transports: set[str]

    def ok(self) -> bool:
        return self.code == 0

    def responses(self, method: str, status: int | None = None) -> list[Response]:
        """The responses SIPp received to ``method`` requests (of one status)."""
        return [m for m in self.received if isinstance(m, Response) and m.cseq[1] == method
                and (status is None or m.status == status)]


def read_trace(path: Path) -> tuple[list[Request | Response], list[Request | Response], set[str]]:
    data = path.read_bytes() if path.exists() else b""
    sent: list[Request | Response] = []
    received: list[Request | Response] = []
    transports = set()
    for entry in TRACE_ENTRY.finditer(data):
        raw = data[entry.end():entry.end() + int(entry[3])]
        (sent if entry[2] == b"sent" else received).append(parse(raw, stream=entry[1] == b"TCP"))
        transports.add(entry[1].decode())
    return sent, received, transports


async def sipp(tmp: Path, scenario: Path, remote_port: int | None = None, *extra: str, timeout_s: int = 20,
               sip_port: int = 0, started: asyncio.Event | None = None) -> Sipp:
    """Run one SIPp call of ``scenario`` (as UAC towards ``remote_port``, else as UAS on ``sip_port``) on free
    loopback ports (SIPp's -p 0 means 5060), bounded by ``timeout_s``; ``started`` is set once SIPp listens."""
    assert SIPP
    sip_port = sip_port or free_port()
    media_port = free_port(tcp_too=False, also=(1, 2, 3))  # RTP, RTCP; -rtp_echo echoes +2 too
    trace = tmp / f"{scenario.stem}-{sip_port}-messages.log"
    args = [SIPP, "-sf", str(scenario), "-m", "1", "-i", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port),
            "-s", "bot", "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin", "-trace_msg",
            "-message_file", str(trace), *extra]
    if remote_port is not None:
        args.append(f"127.0.0.1:{remote_port}")
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        if started is not None:
            await until(lambda: _taken(sip_port) or proc.returncode is not None, 5, "SIPp to listen")
            started.set()
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Sipp(proc.returncode, err.decode(errors="replace")[-3000:], *await asyncio.to_thread(read_trace, trace))


def _taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def origin(response: Response) -> tuple[str, int]:
    """The session id and version of the o= line of a response's SDP."""
    line = next(v for v in response.body.decode().splitlines() if v.startswith("o="))
    parts = line.split()
    return parts[1], int(parts[2])


# ---- 1. CANCEL on both sides of the 200

def test_cancel_while_ringing_gets_487_and_no_call(tmp_path: Path) -> None:
    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard), ring_s=3) as phone:
            started = time.monotonic()
            result = await sipp(tmp_path, SCENARIOS / "uac_cancel.xml", phone.agent.port)
            assert result.ok(), result.stderr
            assert time.monotonic() - started < 2.5  # the CANCEL cut the 3 s of ringing short
            await until(lambda: phone.stats.cancelled, 2, "the cancelled call to be counted")
            assert phone.stats.cancelled == 1 and phone.stats.answered == 0 and not phone.calls
            assert not phone.agent.dialogs and phone.stats.ended == {}
            [ringing] = result.responses("INVITE", 180)
            [ok_cancel] = result.responses("CANCEL", 200)
            [terminated] = result.responses("INVITE", 487)  # once: its ACK was matched (no Timer G resend)
            assert not result.responses("INVITE", 200)
            assert ok_cancel.to.tag == terminated.to.tag == ringing.to.tag  # §9.2: one To tag
    asyncio.run(run())
    assert heard == []  # no app was started for a call that never was


def test_invite_again_and_cancel_after_the_200_leave_the_call_alone(tmp_path: Path) -> None:
    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard)) as phone:
            result = await sipp(tmp_path, SCENARIOS / "uac_cancel_late.xml", phone.agent.port)
            assert result.ok(), result.stderr
            await until(lambda: not phone.calls, 2, "the call to end")
            assert phone.stats.answered == 1 and phone.stats.cancelled == 0
            assert phone.stats.ended == {"caller hung up": 1}
            # the retransmitted INVITE was absorbed: one 100 and one 200 (RFC 6026 §7.1: Accepted state) ...
            assert len(result.responses("INVITE", 100)) == 1 and len(result.responses("INVITE", 200)) == 1
            # ... and the CANCEL matched the answered INVITE: 200 and nothing else (§9.2)
            assert [r.status for r in result.responses("CANCEL")] == [200]
            assert not result.responses("INVITE", 487)
    asyncio.run(run())
    [call] = heard
    assert call.answered and call.closed


# ---- 2. hold and resume by re-INVITE

def test_reinvite_holds_and_resumes_and_an_offerless_one_gets_an_offer(tmp_path: Path) -> None:
    heard: list[Heard] = []
    directions: list[tuple[str, str]] = []  # (direction, codec) of the call as it changed

    async def watch(phone: Phone, done: asyncio.Future[Sipp]) -> None:
        while not done.done():
            for call in list(phone.calls.values()):
                if call.negotiated and (not directions or directions[-1] != (call.negotiated.direction,
                                                                           call.negotiated.codec)):
                    directions.append((call.negotiated.direction, call.negotiated.codec))
            await asyncio.sleep(0.01)

    async def run() -> None:
        async with running(recording_router(heard), codecs=("PCMU",)) as phone:
            done = asyncio.ensure_future(sipp(tmp_path, SCENARIOS / "uac_reinvite.xml", phone.agent.port))
            await watch(phone, done)
            result = done.result()
            assert result.ok(), result.stderr
            await until(lambda: not phone.calls, 2, "the call to end")
            assert phone.stats.ended == {"caller hung up": 1}
            answers = result.responses("INVITE", 200)
            assert len(answers) == 4
            sdps = [parse_sdp(r.body) for r in answers]
            audio = [s.audio() for s in sdps]
            assert [a.direction for a in audio if a] == ["sendrecv", "recvonly", "sendrecv", "sendrecv"]
            assert len({a.port for a in audio if a}) == 1  # the same RTP port throughout
            # RFC 3264 §8: the same o= session id, the version one higher with each SDP we send
            ids, versions = zip(*(origin(r) for r in answers), strict=True)
            assert len(set(ids)) == 1 and list(versions) == list(range(versions[0], versions[0] + 4))
            resumed = audio[2]
            assert resumed is not None and resumed.formats[0] == "0"  # G.722 offered first; PCMU is configured
            offered = audio[3]
            assert offered is not None and [offered.rtpmap[pt].split("/")[0] for pt in offered.formats] == \
                ["PCMU", "telephone-event"]
    asyncio.run(run())
    # held, resumed, held again by the answer in the ACK to our offer
    assert directions == [("sendrecv", "PCMU"), ("recvonly", "PCMU"), ("sendrecv", "PCMU"), ("recvonly", "PCMU")], \
        directions


# ---- 3. INFO key presses

def test_info_dtmf_relay_reaches_the_app_and_other_info_gets_415(tmp_path: Path) -> None:
    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard)) as phone:
            result = await sipp(tmp_path, SCENARIOS / "uac_info.xml", phone.agent.port)
            assert result.ok(), result.stderr
            await until(lambda: not phone.calls, 2, "the call to end")
            [ok, unsupported] = result.responses("INFO")
            assert ok.status == 200 and unsupported.status == 415
            assert unsupported.get("Accept") == "application/dtmf-relay"
    asyncio.run(run())
    [call] = heard
    assert call.digits == ["5"] and call.answered and call.closed


# ---- 4. calls the phone places, to SIPp as the UAS

def test_outbound_announcement_to_sipp_with_rtp_echo(stack: VoiceStack, tmp_path: Path) -> None:
    async def run() -> None:
        async with running(lambda info: None) as phone:
            port, started = free_port(), asyncio.Event()
            uas = asyncio.ensure_future(sipp(tmp_path, SCENARIOS / "uas_answer.xml", None, "-rtp_echo",
                                             sip_port=port, started=started))
            await asyncio.wait_for(started.wait(), 6)
            call = await phone.call(f"sip:service@127.0.0.1:{port}",
                                    announcement_factory(stack, "Your parcel arrives tomorrow morning."))
            assert call.negotiated is not None and call.negotiated.codec == "PCMU"
            reason = await asyncio.wait_for(asyncio.shield(call.ended), 20)
            result = await uas
            assert result.ok(), result.stderr
            assert reason == "announcement played" and phone.stats.ended == {"announcement played": 1}
            stats = call.media.stats
            assert stats.packets_sent > 50, stats  # at least a second of speech
            assert stats.packets_received >= stats.packets_sent - 5, stats  # SIPp echoed it back
            [bye] = [m for m in result.received if isinstance(m, Request) and m.method == "BYE"]
            assert bye.to.tag and bye.cseq[0] == 2 and not phone.calls
    asyncio.run(run())


def test_outbound_call_turned_down_busy_fails_with_486(tmp_path: Path) -> None:
    async def run() -> None:
        async with running(lambda info: None) as phone:
            port, started = free_port(), asyncio.Event()
            uas = asyncio.ensure_future(sipp(tmp_path, SCENARIOS / "uas_busy.xml", None, sip_port=port,
                                             started=started))
            await asyncio.wait_for(started.wait(), 6)
            with pytest.raises(CallFailed, match="486"):
                await phone.call(f"sip:service@127.0.0.1:{port}", _never)
            result = await uas
            assert result.ok(), result.stderr  # SIPp got its ACK
            assert not phone.calls and phone._pending == 0
    asyncio.run(run())



def test_outbound_call_to_nobody_fails_after_timer_b() -> None:
    async def run() -> None:
        async with running(lambda info: None, timers=Timers(t1=0.05)) as phone:
            started = time.monotonic()
            with pytest.raises(CallFailed, match="408"):
                await phone.call(f"sip:service@127.0.0.1:{free_port()}", _never)
            assert 3.0 < time.monotonic() - started < 5.0  # Timer B: 64·T1 = 3.2 s
            assert not phone.calls and phone._pending == 0
    asyncio.run(run())


# ---- 5. requests refused without a call

def test_unknown_dialog_unusable_offer_and_unknown_number_are_refused(tmp_path: Path) -> None:
    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard)) as phone:
            result = await sipp(tmp_path, SCENARIOS / "uac_refused.xml", phone.agent.port)
            assert result.ok(), result.stderr
            assert [r.status for r in result.responses("BYE")] == [481]
            finals = [r for r in result.responses("INVITE") if r.status >= 200]
            assert [r.status for r in finals] == [488, 404]  # each once: the ACKs were matched
            assert (finals[0].get("Warning") or "").startswith("305 ") and "G729" in (finals[0].get("Warning") or "")
            assert phone.stats.rejected_other == 2 and phone.stats.answered == 0 and not phone.calls
    asyncio.run(run())
    assert heard == []


# ---- 6. SIP over TCP

def test_speech_call_over_tcp(tmp_path: Path) -> None:
    from tests.support.sipp import scenario

    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard)) as phone:
            result = await sipp(tmp_path, scenario(tmp_path, "auth-thankyou", 500), phone.agent.port, "-t", "t1")
            assert result.ok(), result.stderr
            await until(lambda: not phone.calls, 2, "the call to end")
            assert phone.stats.ended == {"caller hung up": 1}
            assert result.transports == {"TCP"}
            [ok] = result.responses("INVITE", 200)
            assert "transport=tcp" in (ok.get("Contact") or "")
            assert [r.status for r in result.responses("BYE")] == [200]
    asyncio.run(run())
    [call] = heard
    assert call.answered and call.digits == ["1"] and call.frames > 75 and call.closed


def test_invite_without_offer_gets_ours_and_the_ack_brings_the_answer(tmp_path: Path) -> None:
    heard: list[Heard] = []

    async def run() -> None:
        async with running(recording_router(heard), codecs=("PCMU",)) as phone:
            result = await sipp(tmp_path, SCENARIOS / "uac_late_offer.xml", phone.agent.port)
            assert result.ok(), result.stderr
            await until(lambda: not phone.calls, 2, "the call to end")
            [ok] = result.responses("INVITE", 200)
            offer = parse_sdp(ok.body)
            audio = offer.audio()
            assert audio is not None and "101" in audio.formats and audio.direction == "sendrecv"
    asyncio.run(run())
    [call] = heard
    assert call.answered and call.digits == ["7"] and call.closed  # media started with the ACK's answer
