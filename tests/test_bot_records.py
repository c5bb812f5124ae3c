"""Call records from real engine runs: stored and read back, pruned by age and count, redacted for telemetry,
summarised (extractive, and by an upstream peer with fallback); the call recorder's WAV read back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile

from appliance.bot.engine import FlowEngine
from appliance.bot.flow import EXAMPLE_FLOW, load_flow
from appliance.bot.records import CallRecord, CallRecorder, CallStore, Turn, extractive_summary, redact, summarize
from appliance.bot.upstream import LlmClient, UpstreamOptions
from tests.support.openai_peer import OpenAiPeer

T0 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)


def call(call_id: str = "a84b4c76e66710@pc33.example.com", when: datetime = T0) -> CallRecord:
    """A finished call of the example flow: hours by voice, a second question, then a person."""
    async def go() -> CallRecord:
        engine = FlowEngine(load_flow(EXAMPLE_FLOW), clock=lambda: when, call_id=call_id, caller="sip:+447700900123@x")
        await engine.start()
        await engine.on_speech("Hello. I wanted to ask when your shop in Leeds opens on Saturday mornings.")
        await engine.on_speech("Yes.")
        await engine.on_speech("My order 55512345 never arrived, please ring me on 07700 900123 or jo@example.org.")
        await engine.on_dtmf("0")
        return engine.end()
    return asyncio.run(go())


def test_store_round_trip(tmp_path: Path) -> None:
    store = CallStore(tmp_path)
    record = call()
    path = store.save(record)
    assert path.parent == store.call_dir(record.call_id) and path.name == "call.json"
    loaded = store.load(record.call_id)
    assert loaded == record
    assert loaded.outcome == "transferred" and loaded.intents == ["hours", "yes", "agent"]
    assert [t.who for t in loaded.turns[:2]] == ["bot", "bot"] and loaded.turns[0].at == T0
    assert not list(tmp_path.rglob("*.tmp"))


def test_unsafe_call_ids_stay_inside_the_store(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "calls")
    directory = store.call_dir("../../etc/passwd")
    assert directory.parent == tmp_path / "calls" and ".." not in directory.name


def test_prune_by_age_and_count(tmp_path: Path) -> None:
    store = CallStore(tmp_path, retention_days=30, max_records=3)
    for days in (45, 31, 20, 10, 5, 1):
        store.save(CallRecord(f"call-{days}", "example", T0 - timedelta(days=days), outcome="completed"))
    in_progress = store.call_dir("call-live")  # a WAV being written, no record yet
    (in_progress / "recording.wav").write_bytes(b"RIFF")
    gone = store.prune(now=T0)
    assert sorted(p.name for p in gone) == ["call-10", "call-20", "call-31", "call-45"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call-1", "call-5", "call-live"]
    assert [r.call_id for r in store.records()] == ["call-5", "call-1"]
    assert CallStore(tmp_path, retention_days=None, max_records=None).prune(now=T0 + timedelta(days=999)) == []


@pytest.mark.parametrize(("text", "masked"), [
    ("write to jo.smith+calls@example.co.uk", "write to [email]"),
    ("ring me on +44 7700 900123 tonight", "ring me on [phone] tonight"),
    ("my card ends 4242424242424242", "my card ends [number]"),
    ("account four five six seven eight", "account [number]"),
    ("it is twenty twenty one double five", "it is [number]"),
    ("press 1 for two kids aged 12", "press 1 for two kids aged 12"),
    ("order 123 on the third", "order 123 on the third"),
])
def test_redaction(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_redacted_record() -> None:
    record = call().redacted()
    text = record.transcript()
    assert "55512345" not in text and "900123" not in text and "jo@example.org" not in text
    assert "[number]" in text and "[phone]" in text and "[email]" in text and "Leeds" in text
    assert record.caller == "sip:[phone]@x"


def test_extractive_summary() -> None:
    summary = extractive_summary(call(), sentences=1)
    assert summary.startswith("The caller asked for hours, then agent.")
    assert "The caller was put through to a person." in summary
    assert '"My order 55512345 never arrived, please ring me on 07700 900123 or jo@example.org."' in summary
    assert "Yes." not in summary.split("The caller said:")[1]
    record = CallRecord("c", "orders", T0, slots={"order_number": "123456"}, outcome="voicemail",
                        turns=[Turn("caller", "ok", T0)])
    assert extractive_summary(record) == "Details: order number: 123456. The caller left a voicemail."


def test_llm_summary_and_its_fallback() -> None:
    peer = OpenAiPeer()
    try:
        peer.content = "The caller asked about Saturday hours and a missing order, then asked for a person."
        record = call()

        async def go() -> str:
            client = LlmClient(UpstreamOptions(peer.url, timeout_s=2))
            try:
                return await summarize(record, client)
            finally:
                await client.aclose()
        assert asyncio.run(go()) == peer.content
        sent = peer.requests[0]["messages"][-1]["content"]
        assert "55512345" not in sent and "[number]" in sent and "Caller: Yes." in sent  # redacted data
        peer.status = 500
        assert asyncio.run(go()) == extractive_summary(record)
    finally:
        peer.close()


def tone(seconds: float, hz: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_recorder_stereo_keeps_each_side_in_place(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller, bot = tone(3.0, 440), tone(0.5, 880)
    with CallRecorder(path) as recorder:
        for i in range(0, len(caller), 320):  # 20 ms chunks, as RTP delivers them
            recorder.inbound(caller[i:i + 320])
            if i == 16000:  # the bot answers one second in
                recorder.outbound(bot, at_s=1.0)
    audio, rate = soundfile.read(path, dtype="int16")
    assert rate == 16000 and audio.shape == (48000, 2)
    assert np.array_equal(audio[:, 0], caller)
    assert not audio[:16000, 1].any() and np.array_equal(audio[16000:24000, 1], bot) and not audio[24000:, 1].any()


def test_recorder_mixed_and_late_chunks(tmp_path: Path) -> None:
    path = tmp_path / "mixed.wav"
    recorder = CallRecorder(path, mode="mixed", lag_s=0.5)
    recorder.inbound(tone(4.0, 300))  # far ahead of the bot: the start is written out
    recorder.outbound(np.full(1600, 1000, np.int16), at_s=0.0)  # too late: already on disk, dropped
    recorder.outbound(np.full(1600, 1000, np.int16), at_s=3.8)  # within the lag: mixed in
    assert recorder.close() == 4.0
    audio, _ = soundfile.read(path, dtype="int16")
    expected = tone(4.0, 300).astype(np.int32)
    expected[60800:62400] += 1000
    assert audio.ndim == 1 and np.array_equal(audio, np.clip(expected, -32768, 32767))
