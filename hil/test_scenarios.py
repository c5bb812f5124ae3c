"""The HIL scenarios, in order, on one target (hil/conftest.py): it boots to READY; a WAV through the API comes
back as its transcript; SIP answers; a SIPp call hears the greeting (its RTP recorded on the harness); an update
to the other slot comes up and is blessed, and a rollback returns to the first; a power cut in the middle of
writing an update leaves a device that boots its good slot.

Run: ``make hil`` (QEMU) or ``HIL_TARGET=ssh://root@BOARD HIL_API_KEY=… HIL_BUNDLE=… make hil``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.audio import wav_bytes
from appliance.bench.text import normalise
from hil.call import greeting_call
from hil.targets import Target, TargetError, cut_while_writing, sip_options, wait_ready

ready_s = 900
SOUNDS = Path("/usr/share/asterisk/sounds/en")


def status(target: Target) -> dict[str, Any]:
    done = target.ssh("appliance firmware status --json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def reboot(target: Target) -> None:
    """Reboot and wait until boot assessment has judged the slot (QEMU: its console marker; a board: the
    booted slot no longer 'trying')."""
    guest = getattr(target, "guest", None)
    seen = len(guest.lines) if guest else 0
    target.ssh("systemctl reboot", timeout=60)
    if guest:
        guest.wait_for("APPLIANCE-SLOT", ready_s, start=seen)
    else:
        time.sleep(30)
    target.wait_ssh(300)
    wait_ready(target, ready_s)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = status(target)
        if now["slots"][now["booted"]]["state"] != "trying":
            return
        time.sleep(5)


def test_boots_to_ready(target: Target) -> None:
    body = wait_ready(target, ready_s)
    assert body["status"] == "ok"
    assert status(target)["booted"] in ("a", "b")


def test_a_wav_through_the_api_comes_back_as_its_transcript(target: Target) -> None:
    if not target.api_key:
        pytest.skip("no API key (HIL_API_KEY)")
    wait_ready(target, ready_s, models=True)  # before that: 503 with Retry-After
    wav = SOUNDS / "all-circuits-busy-now.wav"
    reply = httpx.post(f"{target.api}/v1/audio/transcriptions", timeout=600,
                       headers={"Authorization": f"Bearer {target.api_key}"},
                       files={"file": (wav.name, wav.read_bytes(), "audio/wav")}, data={"model": "whisper-1"})
    assert reply.status_code == 200, reply.text
    text = reply.json()["text"].lower()
    assert "circuits" in text and "busy" in text, text


def test_sip_answers_options(target: Target) -> None:
    assert sip_options(target.sip[1], target.sip[0]).startswith("SIP/2.0 200")


def test_a_sipp_call_hears_the_greeting(target: Target, tmp_path: Path) -> None:
    if not target.media_host:
        pytest.skip("the device's RTP cannot reach this harness: QEMU is isolated outside a loopback-only "
                    "network namespace (make hil makes one)")
    if not target.api_key:
        pytest.skip("no API key (HIL_API_KEY) to transcribe the recording with")
    wait_ready(target, ready_s, models=True)
    pcm = greeting_call(target.sip, target.media_host, tmp_path, listen_s=60)
    assert len(pcm) > 8000 * 3, f"{len(pcm) / 8000:.1f} s of audio came back"
    reply = httpx.post(f"{target.api}/v1/audio/transcriptions", timeout=600,
                       headers={"Authorization": f"Bearer {target.api_key}"},
                       files={"file": ("greeting.wav", wav_bytes(pcm, 8000), "audio/wav")}, data={"model": "whisper-1"})
    assert reply.status_code == 200, reply.text
    text = normalise(reply.json()["text"])
    assert "thank you for calling" in text, text


def test_update_comes_up_blessed_then_rolls_back(target: Target) -> None:
    before = status(target)["booted"]
    done = target.ssh(f"appliance firmware install {target.bundle_path()} --tries 3", timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    reboot(target)
    after = status(target)
    assert after["booted"] != before and after["slots"][after["booted"]]["state"] == "good", after
    assert target.ssh("appliance firmware rollback", timeout=120).returncode == 0
    reboot(target)
    assert status(target)["booted"] == before


def test_a_power_cut_while_an_update_is_written_leaves_the_good_slot(target: Target) -> None:
    booted = status(target)["booted"]
    other = "root-b" if booted == "a" else "root-a"
    try:
        cut_while_writing(target, other, f"appliance firmware install {target.bundle_path()}")
    except TargetError as exc:
        if "HIL_POWER_CUT" in str(exc):
            pytest.skip(str(exc))
        raise
    target.power_on()
    wait_ready(target, ready_s)
    after = status(target)
    assert after["booted"] == booted and list(after["slots"]) == [booted], after  # the half-written slot has no entry
