"""`appliance bench sip`: concurrent SIPp calls carrying real speech into the appliance's phone.

The phone (``appliance.sip.phone``) runs in this process, every call answered by the echo bot on the shared
voice core; each caller is a SIPp process on loopback playing Asterisk prompts as RTP captures: INVITE (PCMU
and telephone-event), ACK, then per turn a prompt and a pause for the echo to come back, then BYE. Callers
beyond ``max_calls`` must get 503 with a Retry-After header: the scenario branches on the 503, checks the
header (the call fails without it), ACKs, and the call counts as turned away, not failed.

Turn latency, on the event loop clock at the call's media edges: the last voiced 20 ms frame of the caller's
utterance as the media clock hands it to the call (after the jitter buffer, which holds a packet ≥ 40 ms:
not counted; before the call's audio queue, whose backlog under load is) → the first packet of the answer's
talkspurt sent (``RtpSession.on_talkspurt``). An answer that starts while the caller still speaks is not a
turn; an answer that never comes before the next prompt (or the BYE) is a missed turn.

Levels of concurrency: 1 (the baseline) up to beyond capacity, each a wave of callers started ``stagger_s``
apart (repeated until ``min_turns`` turns were spoken, so the baseline has more than one call); latency as
ratios against one call; where a turn's time goes (when the end of speech, the final caption and the first
synthesised audio came, after the last voiced frame); CPU seconds per wall second of this process and of the
SIPp processes, the event loop's lag, ASR partials dropped under load and the WER of the echoed captions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio import read_audio
from appliance.audio.queue import PcmQueue
from appliance.bench.corpus import SOUNDS, Prompt, load_prompts
from appliance.bench.pcap import write_rtp_pcap
from appliance.bench.sip_memory import ROUND, MemoryResult, run_memory
from appliance.bench.text import wer
from appliance.bench.voice import latency_stats, phrase_caches
from appliance.bot.calls import ModeCallApp
from appliance.calls import CallApp, CallAppFactory, CallControl
from appliance.errors import ApplianceError
from appliance.sessions import SessionSpec
from appliance.sip.call import Call
from appliance.sip.phone import Phone, PhoneOptions
from appliance.voice.stack import VoiceStack

Progress = Callable[[str], None]
VOICED_RMS = 0.01  # a caller's 20 ms frame louder than this (-40 dBFS) is speech
OVERLAP_S = 0.1  # an answer starting this soon after the caller's last voiced frame overlaps the caller
GOAL_P95_MS = 1000.0  # the goal at max_calls: p95 turn latency at most 1 s
LEAD_S, TAIL_S = 0.2, 0.5  # silence around each prompt in its capture
STAGES = ("speech_ended", "final_caption", "audio")  # the voice core's events timed within a turn


@dataclass(frozen=True)
class SipBenchOptions:
    levels: tuple[int, ...] = (1, 2, 4, 8)  # concurrent callers; the first is the baseline
    max_calls: int = 8  # the phone's capacity; callers beyond it must get 503
    beyond: int = 2  # a last level this many callers past max_calls (unless a level already is; 0: none)
    turns: int = 2  # prompts spoken per call
    prompts: int = 6  # Asterisk prompts (1-3 s), rotated over the calls
    min_turns: int = 6  # a level repeats its wave of calls until this many turns were spoken
    stagger_s: float = 0.4  # between the starts of a wave's callers
    listen_s: float = 3.5  # after each prompt, for the echo to come back
    rtp_ports: tuple[int, int] = (40000, 40999)
    memory: int = 0  # then this many plain UAC INVITEs in rounds of 100: RSS per round (bench/sip_memory.py)
    memory_rate: float = 20.0  # INVITEs per second in the memory stage (far past max_calls: an overload)

    def plan(self) -> tuple[int, ...]:
        """The levels run, in order."""
        if self.beyond <= 0 or any(level > self.max_calls for level in self.levels):
            return self.levels
        return (*self.levels, self.max_calls + self.beyond)

    def waves(self, level: int) -> int:
        return max(1, math.ceil(self.min_turns / (min(level, self.max_calls) * self.turns)))


@dataclass
class LevelResult:
    concurrency: int
    waves: int
    attempted: int = 0
    answered: int = 0  # by the scenario's count: 200, the turns, BYE answered
    turned_away: int = 0  # 503 with a Retry-After header
    failed: int = 0
    retry_after_s: list[int] = field(default_factory=list)
    turns_expected: int = 0
    turns_measured: int = 0
    latency: dict[str, float | int] = field(default_factory=dict)  # n, p50_ms, p95_ms, mean_ms, max_ms
    stages_p50_ms: dict[str, float] = field(default_factory=dict)  # from the last voiced frame, per event
    p50_vs_1_call: float | None = None
    p95_vs_1_call: float | None = None
    wer: float | None = None  # the echo's final captions against the prompts' transcripts
    cpu_cores: float = 0.0  # this process (phone, voice core): CPU seconds per wall second
    sipp_cpu_cores: float = 0.0
    loop_lag_ms: dict[str, float | int] = field(default_factory=dict)
    asr_runs: int = 0  # Whisper passes (partials and finals) on the one shared model
    asr_partials_dropped: int = 0
    errors_logged: int = 0  # log records at ERROR or above during the level: crashes show here
    phone: dict[str, Any] = field(default_factory=dict)  # the phone's own counts
    errors: list[str] = field(default_factory=list)  # the first few failed callers' reasons
    wall_s: float = 0.0


@dataclass
class SipBenchResult:
    options: SipBenchOptions
    prompts: list[dict[str, Any]]
    machine: dict[str, Any]
    levels: list[LevelResult]
    goal: dict[str, Any] = field(default_factory=dict)
    memory: MemoryResult | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_sipp() -> str:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise ApplianceError("sipp not found; fix: apt-get install sip-tester")
    return sipp


def planned_calls(options: SipBenchOptions) -> int:
    """SIPp callers the run starts (one warm-up call included; a memory round counts as one): a progress bar's
    total."""
    return 1 + sum(level * options.waves(level) for level in options.plan()) + -(-options.memory // ROUND)


@dataclass
class _Probe:
    """One answered call's turns: voiced frames of the caller in, talkspurts of the answer out, and when the
    voice core's events in between came (the end of speech, the final caption, the first synthesised audio)."""

    loop: asyncio.AbstractEventLoop
    latencies: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    captions: dict[int, str] = field(default_factory=dict)  # by utterance: a rejoined turn's last final counts
    last_voiced: float | None = None
    waiting: bool = False  # the caller spoke since the last answer began
    marks: dict[str, float] = field(default_factory=dict)

    def heard(self, samples: np.ndarray) -> None:
        if np.sqrt(np.mean((samples.astype(np.float32) / 32768) ** 2)) > VOICED_RMS:
            self.last_voiced, self.waiting = self.loop.time(), True
            self.marks.clear()

    def spoke(self, at: float) -> None:
        if self.waiting and self.last_voiced is not None and at - self.last_voiced >= OVERLAP_S:
            self.latencies.append(at - self.last_voiced)
            self.stages.append({k: t - self.last_voiced for k, t in self.marks.items()})
            self.waiting = False

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "caption" and event.get("final"):
            kind = "final_caption"
            if event.get("source"):
                self.captions[int(event.get("utterance", 0))] = str(event["source"])
        if kind in STAGES and self.waiting:
            self.marks.setdefault(str(kind), self.loop.time())


def _echo_factory(stack: VoiceStack, probes: dict[int, _Probe]) -> CallAppFactory:
    """The echo bot, with the call's media edges timed; a call is keyed by the caller's number."""

    async def make(control: CallControl, speaker: PcmQueue, rate: int) -> CallApp:
        assert isinstance(control, Call)
        probe = _Probe(asyncio.get_running_loop())
        match = re.search(r"caller(\d+)@", control.info.caller)
        assert match, control.info.caller  # only the bench's scenarios call
        probes[int(match.group(1))] = probe
        control.media.on_heard, control.media.on_talkspurt = probe.heard, probe.spoke
        return ModeCallApp(stack, SessionSpec(mode="echo"), speaker, rate, probe.event)

    return make


_INVITE = """INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:caller{call}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller{call}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 1 1 IN IP[local_ip_type] [local_ip]
s=call
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
"""
_IN_DIALOG = """{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:caller{call}@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} {method}
Max-Forwards: 70
Content-Length: 0
"""
# The ACK of a 503 belongs to the INVITE's transaction (its branch, the request URI).
_ACK_503 = _IN_DIALOG.replace("[next_url]", "sip:[service]@[remote_ip]:[remote_port]")


def _send(text: str, attributes: str = "") -> str:
    return f"  <send{attributes}><![CDATA[\n\n{text}\n]]></send>\n"


def scenario(call: int, turns: list[tuple[Path, float]], listen_s: float) -> str:
    """A SIPp UAC scenario: INVITE; on 503 check Retry-After, ACK it, log "busy N"; else ACK, play each
    (capture, seconds) and listen, BYE, log "done"."""
    body = [_send(_INVITE.format(call=call), ' retrans="500"'),
            '  <recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n'
            '  <recv response="503" optional="true" next="busy"><action>\n'
            '    <ereg regexp="[0-9]+" search_in="hdr" header="Retry-After:" check_it="true" assign_to="retry"/>\n'
            '  </action></recv>\n  <recv response="200" rrs="true"/>\n',
            _send(_IN_DIALOG.format(method="ACK", call=call, cseq=1))]
    for capture, seconds in turns:
        body.append(f'  <nop><action><exec play_pcap_audio="{capture}"/></action></nop>\n'
                    f'  <pause milliseconds="{int(1000 * (seconds + listen_s))}"/>\n')
    body += [_send(_IN_DIALOG.format(method="BYE", call=call, cseq=2), ' retrans="500"'),
             '  <recv response="200"/>\n  <nop next="end"><action><log message="done"/></action></nop>\n'
             '  <label id="busy"/>\n']
    # SIPp's [branch] holds the message's index: [branch-N], N messages back, is the INVITE's
    index = sum("".join(body).count(tag) for tag in ("<send", "<recv", "<nop", "<pause"))
    body += [_send(_ACK_503.format(method="ACK", call=call, cseq=1).replace("[branch]", f"[branch-{index}]")),
             '  <nop><action><log message="busy [$retry]"/></action></nop>\n  <label id="end"/>\n']
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="bench call">\n{"".join(body)}</scenario>\n'


@dataclass
class _Caller:
    outcome: str  # answered, busy, failed
    retry_after: int | None = None
    error: str = ""


async def _caller(sipp: str, path: Path, port: int, delay: float, limit_s: float) -> _Caller:
    """One SIPp call after ``delay``, time-bounded; the process is killed whatever happens."""
    await asyncio.sleep(delay)
    log = path.with_suffix(".log")
    proc = await asyncio.create_subprocess_exec(
        sipp, "-sf", str(path), "-m", "1", "-i", "127.0.0.1", "-p", "0", "-mp", "0", "-s", "bot",
        "-timeout", f"{int(limit_s)}s", "-timeout_error", "-nostdin", "-trace_logs", "-log_file", str(log),
        f"127.0.0.1:{port}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), limit_s + 10)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    words = (await asyncio.to_thread(log.read_text, errors="replace")).split() if log.exists() else []
    if proc.returncode == 0 and "busy" in words:
        retry = words[words.index("busy") + 1:][:1]
        return _Caller("busy", int(retry[0]) if retry and retry[0].isdigit() else None)
    if proc.returncode == 0 and "done" in words:
        return _Caller("answered")
    return _Caller("failed", error=f"sipp exit {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}")


class _Meters(logging.Handler):
    """What a level costs: CPU seconds per wall second of this process (phone, voice core) and of the SIPp
    processes, the event loop's lag (a task sleeping 50 ms at a time), log records at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors, self.lags = 0, list[float]()
        self.started, self.usage = time.monotonic(), _cpu_seconds()
        self._task = asyncio.create_task(self._lag())
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.errors += 1

    async def _lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.05)
            self.lags.append(loop.time() - start - 0.05)

    async def stop(self, result: LevelResult) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        logging.getLogger().removeHandler(self)
        wall, (own, children) = time.monotonic() - self.started, _cpu_seconds()
        result.wall_s, result.errors_logged, result.loop_lag_ms = round(wall, 1), self.errors, _stats(self.lags)
        result.cpu_cores = round((own - self.usage[0]) / wall, 2)
        result.sipp_cpu_cores = round((children - self.usage[1]) / wall, 2)


def _cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _stats(values: list[float]) -> dict[str, float | int]:
    return {**latency_stats(values), **({"max_ms": round(1000 * max(values), 1)} if values else {})}


class _Bench:
    def __init__(self, stack: VoiceStack, options: SipBenchOptions, prompts: list[Prompt], tmp: Path,
                 progress: Progress) -> None:
        self.stack, self.options, self.prompts, self.tmp, self.progress = stack, options, prompts, tmp, progress
        self.sipp, self.captures = find_sipp(), _capture_prompts(prompts, tmp)
        self.seconds = [LEAD_S + p.duration + TAIL_S for p in prompts]

    def turns_of(self, call: int) -> list[int]:
        return [(call * self.options.turns + k) % len(self.prompts) for k in range(self.options.turns)]

    def scenarios(self, tag: str, calls: int) -> list[Path]:
        paths = [self.tmp / f"{tag}-{call}.xml" for call in range(calls)]
        for call, path in enumerate(paths):
            turns = [(self.captures[p], self.seconds[p]) for p in self.turns_of(call)]
            path.write_text(scenario(call, turns, self.options.listen_s))
        return paths

    async def call(self, path: Path, port: int, delay: float, limit_s: float, label: str) -> _Caller:
        caller = await _caller(self.sipp, path, port, delay, limit_s)
        self.progress(label)
        return caller

    async def run(self) -> tuple[list[LevelResult], MemoryResult | None]:
        o = self.options
        try:
            with phrase_caches(self.stack, 0):  # the callers' words are echoed: new text, as a caller's is
                await self.level(1, 1, "warm-up")  # loads and warms every model on the path; not reported
                levels = [await self.level(n, o.waves(n), f"level-{n}") for n in o.plan()]
            memory = await run_memory(self.stack, self.sipp, o.memory, o.memory_rate, max_calls=o.max_calls,
                                      progress=self.progress) if o.memory > 0 else None
            return levels, memory
        finally:
            await self.stack.stop()

    async def level(self, concurrency: int, waves: int, tag: str) -> LevelResult:
        o, result, probes = self.options, LevelResult(concurrency, waves), dict[int, _Probe]()
        factory = _echo_factory(self.stack, probes)
        phone = Phone(PhoneOptions(host="127.0.0.1", port=0, rtp_ports=o.rtp_ports, max_calls=o.max_calls),
                      lambda info: factory)
        scheduler = self.stack.scheduler(self.stack.asr_model("en", "transcribe"))
        runs, dropped, label = scheduler.completed, scheduler.dropped, f"{tag}: {concurrency} concurrent calls"
        paths = await asyncio.to_thread(self.scenarios, tag, waves * concurrency)
        limit = max(self.seconds) * o.turns + o.listen_s * o.turns + o.stagger_s * concurrency + 30
        meters = _Meters()
        await phone.start()
        try:
            for wave in range(waves):
                callers = await asyncio.gather(*(self.call(paths[wave * concurrency + i], phone.agent.port,
                                                           i * o.stagger_s, limit, label) for i in range(concurrency)))
                for caller in callers:
                    result.attempted += 1
                    result.answered += caller.outcome == "answered"
                    result.turned_away += caller.outcome == "busy"
                    result.failed += caller.outcome == "failed"
                    result.retry_after_s += [caller.retry_after] if caller.retry_after is not None else []
                    result.errors += [caller.error][:3 - len(result.errors)] if caller.error else []
                deadline = time.monotonic() + 5
                while phone.calls and time.monotonic() < deadline:  # the last BYEs being handled
                    await asyncio.sleep(0.05)
        finally:
            await phone.stop()
            await meters.stop(result)
        result.asr_runs, result.asr_partials_dropped = scheduler.completed - runs, scheduler.dropped - dropped
        result.phone = {k: v for k, v in phone.status().items() if k not in ("port", "calls")}
        latencies = [s for probe in probes.values() for s in probe.latencies]
        result.turns_expected, result.turns_measured, result.latency = o.turns * len(probes), len(latencies), \
            _stats(latencies)
        stages = [stage for probe in probes.values() for stage in probe.stages]
        result.stages_p50_ms = {k: round(1000 * float(np.median(v)), 1) for k in STAGES
                                if (v := [stage[k] for stage in stages if k in stage])}
        if probes:
            references = [" ".join(self.prompts[p].text for p in self.turns_of(k)) for k in sorted(probes)]
            result.wer = round(wer(references, [" ".join(probes[k].captions.values()) for k in sorted(probes)]), 4)
        return result


def _capture_prompts(prompts: list[Prompt], tmp: Path) -> list[Path]:
    """Each prompt read at 8 kHz from its WAV, between silences, as an RTP capture with an SSRC of its own
    (a turn's new SSRC tells the phone's jitter buffer that the stream restarted)."""
    paths = []
    for index, prompt in enumerate(prompts):
        pcm = read_audio(SOUNDS / prompt.language / f"{prompt.name}.wav", 8000).samples
        pcm = np.concatenate([np.zeros(int(LEAD_S * 8000), np.float32), pcm, np.zeros(int(TAIL_S * 8000), np.float32)])
        paths.append(tmp / f"{prompt.name}.pcap")
        write_rtp_pcap(paths[-1], pcm, ssrc=0x5EED0000 + index)
    return paths


def run(stack: VoiceStack, options: SipBenchOptions, progress: Progress = lambda step: None) -> SipBenchResult:
    """Every level on a fresh event loop; ApplianceError when sipp or the prompts are missing."""
    find_sipp()
    prompts = load_prompts("en", options.prompts, min_s=1.0, max_s=3.0)
    if options.turns > len(prompts):
        raise ApplianceError(f"{options.turns} turns need as many prompts; only {len(prompts)} found")
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as tmp:
        levels, memory = asyncio.run(_Bench(stack, options, prompts, Path(tmp), progress).run())
    base = levels[0].latency if levels else {}
    for level in levels:
        for key in ("p50", "p95"):
            if base.get(f"{key}_ms") and level.latency.get(f"{key}_ms"):
                setattr(level, f"{key}_vs_1_call", round(level.latency[f"{key}_ms"] / base[f"{key}_ms"], 2))
    within = [lv.concurrency for lv in levels if lv.concurrency <= options.max_calls and lv.failed == 0
              and lv.turns_measured and lv.latency.get("p95_ms", math.inf) <= GOAL_P95_MS]
    beyond = [lv for lv in levels if lv.concurrency > options.max_calls]
    goal = {"p95_ms": GOAL_P95_MS, "concurrency": options.max_calls,
            "max_concurrency_within_p95": max(within, default=0),
            "beyond_capacity_turned_away_as_expected": all(
                lv.turned_away == lv.attempted - options.max_calls * lv.waves and lv.failed == 0
                and len(lv.retry_after_s) == lv.turned_away for lv in beyond) if beyond else None}
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "platform": platform.platform()}
    summary = [{"name": p.name, "text": p.text, "seconds": round(p.duration, 2)} for p in prompts]
    return SipBenchResult(options, summary, machine, levels, goal, memory)
