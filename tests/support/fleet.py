"""A signed update repository for the tests: keys made with `appliance.release.keys`, the repository with
`appliance.release`, model versions derived from a real model (Silero VAD), and the device side (a store of its
own and an agent) pointed at a loopback server."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.bench.update import changed_copy
from appliance.fleet.agent import Agent, DeviceFacts, Schedule
from appliance.fleet.client import TufClient
from appliance.fleet.events import EventLog
from appliance.fleet.install import Hooks, Installer
from appliance.fleet.state import AgentState
from appliance.models import ModelStore, load_catalog
from appliance.release import keys as keyfiles
from appliance.release.publish import Release, add_config, add_firmware, add_model, publish
from appliance.release.repository import FileRepository, create

PASSPHRASE = "a test passphrase"
ROLES = ("targets", "snapshot", "timestamp", "models", "config", "firmware")
MODEL = "silero-vad-v6"


def make_keys(folder: Path, names: list[str]) -> dict[str, keyfiles.KeyFile]:
    return {n: keyfiles.generate(folder, n, PASSPHRASE) for n in names}


def open_repo(root: Path, keys: dict[str, keyfiles.KeyFile]) -> FileRepository:
    by_id = {k.keyid: k for k in keys.values()}
    return FileRepository(root, unlock=lambda kid: keyfiles.unlock(by_id[kid], lambda _: PASSPHRASE)
                          if kid in by_id else None)


def new_repo(root: Path, keys: dict[str, keyfiles.KeyFile], root_keys: list[str], threshold: int = 1) -> FileRepository:
    repo = open_repo(root, keys)
    create(repo, [keys[n].key for n in root_keys], threshold, {r: keys[r].key for r in ROLES})
    return repo


def variant_tree(base: Path, out: Path, salt: bytes) -> Path:
    """A real, still loadable model that differs by a few bytes (see ``changed_copy``)."""
    return changed_copy(base, out, salt)


@dataclass
class Published:
    repo: FileRepository
    store: ModelStore  # the device's, holding v1 (pulled from its package)
    v1: Path
    v2: Path


def two_versions(tmp: Path, salt: bytes, offer_v1: bool) -> Published:
    """A repository (one root key) offering v2 of the VAD (and v1 too when ``offer_v1``: then with a delta),
    and a device store holding v1."""
    keys = make_keys(tmp / "keys", ["root", *ROLES])
    repo = new_repo(tmp / "repo", keys, ["root"])
    store = ModelStore(tmp / "store")
    store.pull(load_catalog().get(MODEL))
    v1 = store.active_tree(MODEL)
    assert v1 is not None
    v2 = variant_tree(v1, tmp / "v2", salt)
    if offer_v1:
        add_model(repo, v1, Release(version=1))
    add_model(repo, v2, Release(version=2))
    return Published(repo, store, v1, v2)


def broken_tree(base: Path, out: Path) -> Path:
    """A tree whose model file is garbage of the right kind of name: signed fine, fails the smoke test."""
    shutil.copytree(base, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        path = out / f["variant"] / f["name"]
        path.chmod(0o644)
        path.unlink()
        data = b"not an onnx model " * 64
        path.write_bytes(data)
        f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@dataclass
class Device:
    """The device side: its store, state and an agent (hooks given by the test)."""

    store: ModelStore
    state_dir: Path
    agent: Agent

    @property
    def state(self) -> AgentState:
        return self.agent.state

    def events(self) -> list[dict]:
        return EventLog(self.state_dir / "events.jsonl").read()


def device(store: ModelStore, state_dir: Path, url: str, trusted_root: Path, hooks: Hooks,
           tags: frozenset[str] = frozenset({"test-profile"}), config: str | None = None,
           board: str | None = None, pins: dict[str, int] | None = None) -> Device:
    client = TufClient(url, state_dir / "metadata", trusted_root.read_bytes())
    state, events = AgentState(state_dir), EventLog(state_dir / "events.jsonl")
    installer = Installer(store, client, httpx.Client(timeout=10), state, events, hooks, state_dir / "config.toml",
                          threading.Event())
    facts = DeviceFacts("0.1.0", tags, pins or {}, config, board)
    return Device(store, state_dir, Agent(client, installer, state, events, facts, Schedule(1, 0, 4)))


__all__ = ["Release", "add_config", "add_firmware", "add_model", "publish"]
