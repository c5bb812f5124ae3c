"""`appliance bench update`: what updates cost on the wire and in time, against the whole-file transfer.

A throwaway signed repository (fresh keys) on a loopback server offers a model from this device's store; a
device with an empty store of its own then polls through the real agent (TUF verification, smoke test through
this device's runtimes, atomic switch, health check):

* a new model (every file in full);
* the same model changed by a few bytes, with the repository's delta, and, as the baseline, without it;
* a configuration bundle;
* a poll with nothing new (metadata only).

Bytes are counted by the server (metadata and targets apart); seconds are wall time of the poll that applied.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from appliance.bench.repo_server import RepoServer
from appliance.fleet.agent import Agent, DeviceFacts, Schedule
from appliance.fleet.client import TufClient
from appliance.fleet.events import EventLog
from appliance.fleet.install import Hooks, Installer
from appliance.fleet.state import AgentState
from appliance.models import ModelStore
from appliance.models.store import ModelFiles
from appliance.release import keys as keyfiles
from appliance.release.publish import Release, add_config, add_model, publish
from appliance.release.repository import FileRepository, create

ROLES = ("root", "targets", "snapshot", "timestamp", "models", "config", "firmware")


def changed_copy(tree: Path, out: Path, salt: bytes) -> Path:
    """A copy of a model version whose ONNX files carry one more unknown protobuf field (field 100): still the
    same, loadable model, a few bytes different, as a re-release with new metadata looks to a delta."""
    shutil.copytree(tree, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        path = out / f["variant"] / f["name"]
        if f["name"].endswith(".onnx"):
            data = path.read_bytes() + b"\xa2\x06" + bytes([len(salt)]) + salt
            path.unlink()
            path.write_bytes(data)
            f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    if not any(f["name"].endswith(".onnx") for f in manifest["files"]):
        raise ValueError(f"{manifest['id']} has no ONNX file to change; pick an ONNX model (e.g. silero-vad-v6)")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def run(source: ModelStore, model_id: str, smoke: Callable[[ModelFiles], str | None],
        step: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    tree = source.active_tree(model_id)
    if tree is None:
        raise ValueError(f"model {model_id} is not in the store; fix: appliance models pull {model_id}")
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        passphrase = secrets.token_urlsafe(16)
        made = {n: keyfiles.generate(work / "keys", n, passphrase) for n in ROLES}
        by_id = {k.keyid: k for k in made.values()}
        repo = FileRepository(work / "repo", unlock=lambda kid: keyfiles.unlock(by_id[kid], lambda _: passphrase))
        create(repo, [made["root"].key], 1, {r: made[r].key for r in ROLES[1:]})
        add_model(repo, tree, Release(version=1))
        publish(repo)
        cases: dict[str, dict[str, Any]] = {}
        with RepoServer(work / "repo") as server:
            trusted = repo.metadata_dir / "1.root.json"
            device = _Device(work / "device", server.url, trusted, smoke)
            baseline = _Device(work / "baseline", server.url, trusted, smoke, deltas=False)
            step("new model, full")
            cases["new_model_full"] = device.poll(server)
            baseline.poll(server)  # v1 too, so that both hold the same version before the change
            add_model(repo, changed_copy(tree, work / "v2", b"bench"), Release(version=2))
            publish(repo)
            step("changed model, whole file (baseline)")
            cases["changed_model_full"] = baseline.poll(server)
            step("changed model, delta")
            cases["changed_model_delta"] = device.poll(server)
            bundle = work / "bench.toml"
            bundle.write_text("[voice]\nhangover_ms = 240\n")
            add_config(repo, "bench", bundle, Release())
            publish(repo)
            step("config change")
            cases["config_change"] = device.poll(server)
            step("no-op poll")
            cases["noop_poll"] = device.poll(server)
    full, delta = cases["changed_model_full"], cases["changed_model_delta"]
    return {"model": model_id, "model_bytes": sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()),
            "cases": cases, "baseline": "changed_model_full: the whole changed file, no delta",
            "delta_vs_full": {"target_bytes_ratio": round(delta["target_bytes"] / max(1, full["target_bytes"]), 5),
                              "seconds_ratio": round(delta["seconds"] / max(1e-9, full["seconds"]), 3)}}


class _Device:
    """A device of the benchmark: its own store and state, the real agent; ``poll`` measures one poll."""

    def __init__(self, root: Path, url: str, trusted: Path, smoke: Callable[[ModelFiles], str | None],
                 deltas: bool = True) -> None:
        store, state = ModelStore(root / "store"), AgentState(root / "state")
        events = EventLog(root / "state" / "events.jsonl")
        client = TufClient(url, root / "state" / "metadata", trusted.read_bytes())
        hooks = Hooks(smoke=smoke, health=lambda job: None)
        installer = Installer(store, client, httpx.Client(timeout=60), state, events, hooks,
                              root / "state" / "config.toml", threading.Event(), deltas=deltas)
        facts = DeviceFacts("0.1.0", frozenset({"bench"}), {}, "bench", None)
        self.agent = Agent(client, installer, state, events, facts, Schedule())

    def poll(self, server: RepoServer) -> dict[str, Any]:
        server.reset_counts()
        start = time.perf_counter()
        status = self.agent.poll_once()
        seconds = time.perf_counter() - start
        if status.last_error:
            raise RuntimeError(f"bench poll failed: {status.last_error}")
        return {"seconds": round(seconds, 4), "metadata_bytes": server.wire_bytes("/metadata/"),
                "target_bytes": server.wire_bytes("/targets/"), "requests": len(server.requests)}
