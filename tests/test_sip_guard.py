"""Who may call: networks outside `sip.allow` get 403; with `sip.users`, an INVITE needs digest credentials (401
with a challenge, replayed or stale answers refused); one appliance calling another answers the challenge."""

from __future__ import annotations

import asyncio

import numpy as np

from appliance.audio.queue import PcmQueue
from appliance.calls import CallApp, CallControl
from appliance.sip.digest import DigestClient, parse_challenges
from appliance.sip.guard import CallerGuard
from appliance.sip.message import Request
from appliance.sip.outbound import refresh_after
from appliance.sip.phone import CallFailed, Phone, PhoneOptions
from appliance.sip.uri import SipUri


def invite(authorization: str | None = None) -> Request:
    request = Request(method="INVITE", uri=SipUri("sip", "10.0.0.5", "bot"))
    for name, value in (("Via", "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1"), ("From", "<sip:a@10.0.0.9>;tag=1"),
                        ("To", "<sip:bot@10.0.0.5>"), ("Call-ID", "g1"), ("CSeq", "1 INVITE")):
        request.add(name, value)
    if authorization:
        request.add("Authorization", authorization)
    return request


def test_networks_and_digest() -> None:
    open_guard = CallerGuard()
    assert open_guard.check(invite(), "192.168.1.20").status == 0
    assert open_guard.check(invite(), "203.0.113.7").status == 403  # the internet at large
    assert CallerGuard(allow=[]).check(invite(), "203.0.113.7").status == 0

    guard = CallerGuard(users={"desk": "s3cret"})
    first = guard.check(invite(), "10.0.0.9")
    assert first.status == 401 and first.challenge is not None and first.challenge.algorithm == "SHA-256"
    [challenge] = parse_challenges(str(first.challenge))
    client = DigestClient("desk", "s3cret")
    answer = str(client.answer(challenge, "INVITE", "sip:bot@10.0.0.5"))
    assert guard.check(invite(answer), "10.0.0.9").status == 0
    assert guard.check(invite(answer), "10.0.0.9").status == 401  # the same nc again: a replay
    assert guard.check(invite(str(client.answer(challenge, "INVITE", "sip:bot@10.0.0.5"))), "10.0.0.9").status == 0
    wrong = str(DigestClient("desk", "guess").answer(challenge, "INVITE", "sip:bot@10.0.0.5"))
    assert guard.check(invite(wrong), "10.0.0.9").status == 401
    other = CallerGuard(users={"desk": "s3cret"})  # a nonce it never issued (restarted, expired): stale
    again = other.check(invite(str(client.answer(challenge, "INVITE", "sip:bot@10.0.0.5"))), "10.0.0.9")
    assert again.status == 401 and again.challenge is not None and again.challenge.stale
    assert guard.check(invite("Digest nonsense"), "10.0.0.9").status == 400


class Quiet:
    async def answered(self) -> None:
        return None

    async def feed(self, samples: np.ndarray) -> None:
        return None

    async def dtmf(self, digit: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def quiet(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
    return Quiet()


def test_one_appliance_calls_another_that_wants_credentials() -> None:
    async def run() -> None:
        callee = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(34000, 34100),
                                    users=(("desk", "s3cret"),)), lambda info: quiet)
        caller = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=(34100, 34200)), lambda info: None)
        await callee.start()
        await caller.start()
        try:
            target = f"sip:bot@127.0.0.1:{callee.agent.port}"
            try:
                await caller.call(target, quiet)
                raise AssertionError("answered without credentials")
            except CallFailed as exc:
                assert "401" in str(exc)
            call = await caller.call(target, quiet, user="desk", digest=DigestClient("desk", "s3cret"))
            for _ in range(50):
                if callee.calls:
                    break
                await asyncio.sleep(0.02)
            assert list(callee.calls) == [call.info.call_id]
            await call.hangup("done")
            for _ in range(50):
                if not callee.calls:
                    break
                await asyncio.sleep(0.02)
            assert callee.stats.ended == {"caller hung up": 1} and callee.stats.rejected_other == 2  # two 401s
        finally:
            await caller.stop()
            await callee.stop()

    asyncio.run(run())


def test_registrations_refresh_well_before_they_expire() -> None:
    assert refresh_after(3600) == 2880 and refresh_after(120) == 90 and refresh_after(60) == 30
    assert refresh_after(20) == 16 and refresh_after(0.5) == 1.0
