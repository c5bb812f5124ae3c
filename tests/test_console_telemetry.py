"""Telemetry from a device to the console: redaction on the device (phone numbers, e-mail addresses; what a
caller said only when the device opts in), the bounded on-disk outbox while the console is away (oldest
dropped and counted, the count delivered once), the console's time series on the device page, and the fleet's
newest numbers for Prometheus federation behind a viewer's token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from appliance.console import accounts
from appliance.console.app import make_app
from appliance.console.authority import load_or_make
from appliance.console.db import open_database, transaction
from appliance.console.schema import DeviceEvent, Sample
from appliance.fleet.enrolment import ConsoleLink, enrol
from appliance.fleet.identity import load_or_make as device_key
from appliance.fleet.state import AgentState
from appliance.fleet.telemetry import Outbox, ProcessMeter, Sampler, redact, scrub
from appliance.voice.turns import TurnLatencies

PASSWORD = "correct horse battery"


def bearer(client: TestClient, name: str) -> dict[str, str]:
    reply = client.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {reply.json()['token']}"}


@pytest.mark.parametrize("text, expected", [
    ("call from +49 151 1234 5678 ended", "call from [phone] ended"),
    ("(555) 123-4567", "[phone]"),
    ("ref 0151-12345678", "ref [phone]"),
    ("sip:+4915112345678@pbx.example.com", "sip:[email]"),
    ("write to jane.doe@example.org", "write to [email]"),
    ("expired at 2026-12-05 10:00", "expired at 2026-12-05 10:00"),
    ("silero-vad-v6 v2: 1234 bytes in 0.5 s", "silero-vad-v6 v2: 1234 bytes in 0.5 s"),
])
def test_redaction(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_what_a_caller_said_leaves_only_by_opt_in() -> None:
    event = {"type": "call", "transcript": "my number is 0151 1234567", "turns": [{"text": "hi"}], "ok": True}
    assert scrub(event) == {"type": "call", "turns": [{}], "ok": True}
    assert scrub(event, share_transcripts=True)["transcript"] == "my number is [phone]"


def test_the_outbox_is_bounded_and_counts_what_it_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", max_bytes=2000)
    for n in range(40):
        box.put({"samples": [{"at": n, "values": {"calls": n}}], "events": []})
    assert 0 < len(box.batches()) < 40 and box.dropped == 40 - len(box.batches())
    sent: list[dict] = []

    def fail(batch: dict) -> None:
        raise httpx.ConnectError("console away")

    with pytest.raises(httpx.ConnectError):
        box.flush(fail)
    kept = len(box.batches())
    assert box.flush(sent.append) == kept and not box.batches()
    assert sent[0]["dropped"] == 40 - kept and all(b["dropped"] == 0 for b in sent[1:]) and box.dropped == 0
    assert sent[-1]["samples"][0]["values"] == {"calls": 39}


def test_a_device_reports_telemetry_the_console_keeps_shows_and_federates(tmp_path: Path) -> None:
    sessions = open_database(f"sqlite:///{tmp_path / 'console.db'}")
    with transaction(sessions) as session:
        accounts.add_user(session, "viewer", "viewer", PASSWORD)
        accounts.add_user(session, "admin", "admin", PASSWORD)
    with TestClient(make_app(sessions, load_or_make(tmp_path / "ca"), tick_s=3600)) as client:
        admin = bearer(client, "admin")
        token = client.post("/api/v1/enrolment-tokens", json={"group": "lobby"}, headers=admin).json()["token"]
        key = device_key(tmp_path / "device")
        enrol("http://testserver", key, tmp_path / "device" / "fleet", client, token)
        state = AgentState(tmp_path / "device" / "fleet")
        calls = iter([2, 3, 1])
        link = ConsoleLink("http://testserver", key, client,
                           lambda: {"health": "ok", "calls": next(calls), "last_caller": "+49 151 1234 5678"},
                           Outbox(tmp_path / "device" / "outbox"), ProcessMeter().read)
        event = {"type": "error", "ok": False, "detail": "call from jane@example.org failed", "transcript": "hello",
                 "time": "2026-12-05T01:00:00+00:00", "id": "e1"}
        link.send(state, [event])
        offline = ConsoleLink("http://127.0.0.1:9", key, httpx.Client(timeout=2), link.facts, link.outbox,
                              link.metrics)
        offline.send(state)  # the console cannot be reached: the sample waits on disk
        assert len(link.outbox.batches()) == 1  # type: ignore[union-attr]
        link.send(state)  # back: both go
        assert link.outbox.batches() == []  # type: ignore[union-attr]

        with transaction(sessions) as session:
            samples = list(session.scalars(select(Sample).order_by(Sample.id)))
            assert [s.values["calls"] for s in samples] == [2, 3, 1] and "memory_mb" in samples[0].values
            [stored] = list(session.scalars(select(DeviceEvent)))
            assert stored.type == "error" and stored.detail["detail"] == "call from [email] failed"
            assert "transcript" not in stored.detail
        device = client.get(f"/api/v1/devices/{key.id}", headers=admin).json()
        assert device["report"].get("last_caller") == "[phone]"  # the inventory report is redacted too

        assert client.get("/metrics").status_code == 401
        viewer = bearer(client, "viewer")
        text = client.get("/metrics", headers=viewer).text
        found = {(s.name, s.labels.get("device", s.labels.get("state"))): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        assert found[("appliance_fleet_calls", key.id)] == 1.0 and found[("appliance_fleet_devices", "active")] == 1
        assert ("appliance_fleet_memory_mb", key.id) in found

        client.cookies.set("console", viewer["Authorization"][7:])
        page = client.get(f"/devices/{key.id}").text
        assert 'data-metric="calls"' in page and "<polyline" in page and "call from [email] failed" in page


def test_a_sample_carries_the_turn_latencies_since_the_last_one() -> None:
    turns = TurnLatencies()
    sampler = Sampler(turns)
    turns.add(0.2)
    turns.add(0.4)
    first = sampler()
    assert first["turn_latency_p50_ms"] == 400.0 and first["turns"] == 2 and "memory_mb" in first
    assert "turns" not in sampler()  # no turn since
