"""`appliance bench console`: many simulated devices (asyncio clients, each with its own Ed25519 key, enrolled
beforehand) polling the console for their assignment and reporting their inventory, both signed, against the
real `appliance console serve` in its own process: once on SQLite, once on PostgreSQL (a server started for the
run). Per database: sustained requests/s, latency p50/p95, errors, and the console process's CPU (seconds of
CPU per second of wall time; the simulated devices' own CPU beside it, as they share the machine); then
PostgreSQL's figures as ratios of SQLite's, measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bench.postgres import BIN, postgres_server
from appliance.bench.procs import stop
from appliance.console.authority import enrol, load_or_make, make_token
from appliance.console.db import open_database, transaction
from appliance.errors import ApplianceError
from appliance.fleet.identity import DeviceKey
from appliance.ports import free_port


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _enrol(url: str, state: Path, count: int) -> list[DeviceKey]:
    sessions = open_database(url)
    authority = load_or_make(state)
    keys = [DeviceKey(Ed25519PrivateKey.generate()) for _ in range(count)]
    with transaction(sessions) as session:
        for key in keys:
            enrol(session, authority, make_token(session, "bench", "bench", timedelta(hours=1)), key.public_raw.hex())
    sessions.kw["bind"].dispose()
    return keys


async def _device(client: httpx.AsyncClient, key: DeviceKey, interval_s: float, end: float,
                  latencies: list[float], errors: list[str], rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, interval_s))
    report = {"profile": "bench", "version": "0.1.0", "health": "ok", "calls": 0,
              "installed": {"model": {"silero-vad-v6": 1}}, "refused": []}
    while time.monotonic() < end:
        for method, path, payload in (("GET", "/api/v1/device/assignment", None),
                                      ("POST", "/api/v1/device/report", report)):
            body = b"" if payload is None else json.dumps(payload).encode()
            headers = {**key.sign(method, path, body), "Content-Type": "application/json"}
            start = time.perf_counter()
            try:
                reply = await client.request(method, path, content=body, headers=headers)
                if reply.status_code >= 400:
                    errors.append(f"{reply.status_code} {path}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
        await asyncio.sleep(interval_s * rng.uniform(0.8, 1.2))


async def _load(base: str, keys: list[DeviceKey], interval_s: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        start = time.monotonic()
        await asyncio.gather(*(_device(client, key, interval_s, start + seconds, latencies, errors, rng)
                               for key in keys))
        wall = time.monotonic() - start
    ordered = sorted(latencies)

    def pct(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1) if ordered else 0.0

    return {"requests": len(latencies), "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5]}


def _serve(url: str, state: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "APPLIANCE_CONSOLE__DATABASE": url, "APPLIANCE_CONSOLE__STATE_DIR": str(state),
           "APPLIANCE_CONSOLE__PORT": str(port)}
    log = state / "console.log"  # a file, not a pipe: a console logging much must never block on it
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "console", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise ApplianceError(f"the console did not start: {log.read_text(errors='replace')[-2000:]}")
    proc.kill()
    raise ApplianceError("the console did not answer /health within 30 s")


def one(url: str, state: Path, devices: int, interval_s: float, seconds: float) -> dict[str, Any]:
    keys = _enrol(url, state, devices)
    proc, base = _serve(url, state)
    try:
        cpu0, mine = _cpu_seconds(proc.pid), os.times()
        figures = asyncio.run(_load(base, keys, interval_s, seconds))
        figures["console_cpu"] = round((_cpu_seconds(proc.pid) - cpu0) / figures["wall_s"], 2)
        spent = os.times()  # the simulated devices' own share of this machine (they run beside the console)
        figures["devices_cpu"] = round((spent.user + spent.system - mine.user - mine.system) / figures["wall_s"], 2)
    finally:
        stop(proc)
    logged = (state / "console.log").read_text(errors="replace")
    figures["console_errors_logged"] = logged.count("Traceback")
    return figures


def run(devices: int = 1000, interval_s: float = 5.0, seconds: float = 30.0, postgres: str | None = None,
        step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    results: dict[str, Any] = {"devices": devices, "interval_s": interval_s, "seconds": seconds,
                               "offered_requests_per_s": round(2 * devices / interval_s, 1)}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.chmod(work, 0o755)
        step("SQLite")
        results["sqlite"] = one(f"sqlite:///{work / 'sqlite' / 'console.db'}", work / "sqlite", devices,
                                interval_s, seconds)
        step("PostgreSQL")
        if postgres is None and BIN is not None:
            postgres = stack.enter_context(postgres_server(work / "pg"))
        if postgres is None:
            results["postgresql"] = None
            results["note"] = "no PostgreSQL here (Debian postgresql) and no --postgres URL: SQLite only"
            return results
        results["postgresql"] = one(postgres, work / "pg-state", devices, interval_s, seconds)
    sq, pg = results["sqlite"], results["postgresql"]
    results["ratios_postgresql_over_sqlite"] = {
        key: round(pg[key] / sq[key], 2) if sq[key] else None for key in ("requests_per_s", "p50_ms", "p95_ms",
                                                                          "console_cpu")}
    return results
