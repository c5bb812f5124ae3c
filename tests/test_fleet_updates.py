"""Signed updates end to end on loopback: a TUF repository made by `appliance.release`, served by a real HTTP
server, and the device's agent (python-tuf ngclient, resumable downloads, deltas, smoke test through the real
runtime selection, atomic switch, health check and rollback). Every attack leaves the model in use untouched."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from appliance.bench.repo_server import RepoServer
from appliance.config import Settings
from appliance.device import Device
from appliance.fleet.install import Hooks
from appliance.models import ModelStore, load_catalog
from appliance.models.store import sha256_file
from tests.support import fleet

MODEL = fleet.MODEL


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Device:
    """The real runtimes of this machine, for the agent's smoke tests."""
    dev = Device.open(Settings(models={"store": tmp_path_factory.mktemp("runtime-store")}))  # type: ignore[arg-type]
    yield dev
    dev.close()


@pytest.fixture
def world(tmp_path: Path, runtimes: Device):
    """Keys, a repository offering the packaged VAD as v1 and a few-bytes-different v2, a server, a device
    whose store holds v1 (pulled from its package), and an agent with real smoke tests."""
    keys = fleet.make_keys(tmp_path / "keys", ["root-1", "root-2", *fleet.ROLES])
    repo = fleet.new_repo(tmp_path / "repo", keys, ["root-1", "root-2"], threshold=2)
    store = ModelStore(tmp_path / "device-store")
    store.pull(load_catalog().get(MODEL))
    v1 = store.active_tree(MODEL)
    fleet.add_model(repo, v1, fleet.Release(version=1))
    v2 = fleet.variant_tree(v1, tmp_path / "v2", b"version two")
    fleet.add_model(repo, v2, fleet.Release(version=2, tags=["test-profile"]))
    fleet.publish(repo)
    health: list[str | None] = [None]
    hooks = Hooks(smoke=runtimes.trial, health=lambda job: health[0])
    with RepoServer(tmp_path / "repo") as server:
        dev = fleet.device(store, tmp_path / "state", server.url, tmp_path / "repo" / "metadata" / "1.root.json",
                           hooks)
        yield World(tmp_path, keys, repo, server, dev, v1, v2, health)


class World:
    def __init__(self, tmp, keys, repo, server, dev, v1, v2, health) -> None:
        self.tmp, self.keys, self.repo, self.server, self.dev = tmp, keys, repo, server, dev
        self.v1, self.v2, self.health = v1, v2, health

    def onnx_sha(self) -> str:
        return sha256_file(self.dev.store.resolve(MODEL).file("onnx", ".onnx"))

    def events_follow_the_schema(self) -> None:
        schema = json.loads((Path(__file__).parents[1] / "docs" / "fleet-events.schema.json").read_text())
        for event in self.dev.events():
            jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())

    def sha_of(self, tree: Path) -> str:
        return next(f["sha256"] for f in json.loads((tree / "manifest.json").read_text())["files"])


def test_a_new_model_version_arrives_as_a_delta_is_smoke_tested_and_activated(world: World) -> None:
    full = (world.v2 / "onnx" / "model.onnx").stat().st_size
    status = world.dev.agent.poll_once()
    assert status.last_error is None, status.last_error
    assert world.onnx_sha() == world.sha_of(world.v2)
    assert world.dev.state.installed()["model"] == {MODEL: 2}
    assert world.dev.store.previous(MODEL) == world.v1.resolve()
    assert world.dev.store.verify(MODEL) == []
    # the delta crossed the wire, not the model: a few hundred bytes against 2 MB
    blob_bytes = world.server.wire_bytes("/targets/models/blobs/") + world.server.wire_bytes("/targets/models/deltas/")
    assert world.server.wire_bytes("/targets/models/blobs/") == 0 and blob_bytes < 0.01 * full
    kinds = [e["type"] for e in world.dev.events()]
    assert kinds == ["check", "download", "apply"], kinds
    world.events_follow_the_schema()
    world.server.reset_counts()
    again = world.dev.agent.poll_once()  # a no-op poll: metadata only, nothing pending
    assert again.pending == [] and world.server.wire_bytes("/targets/") == 0, world.server.requests


def test_a_cut_connection_resumes_where_it_stopped(world: World, tmp_path: Path, runtimes: Device) -> None:
    fresh = ModelStore(tmp_path / "bare-store")  # no v1 here: the whole file must come
    dev = fleet.device(fresh, tmp_path / "state2", world.server.url, world.repo.metadata_dir / "1.root.json",
                       Hooks(smoke=runtimes.trial, health=lambda job: None), tags=frozenset({"other"}))
    world.server.faults.cut_after, world.server.faults.cut_paths = 300_000, "/targets/models/blobs/"
    first = dev.agent.poll_once()
    assert first.last_error and "interrupted" in first.last_error and "resumes" in first.last_error
    assert fresh.active_tree(MODEL) is None
    world.server.faults.cut_after = None
    second = dev.agent.poll_once()
    assert second.last_error is None, second.last_error
    ranges = [r for p, r in world.server.requests if "/models/blobs/" in p]  # v1 only (tags do not match v2's)
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 300_000  # what reached the disk before the cut (the client reads in chunks)
    size = (world.v1 / "onnx" / "model.onnx").stat().st_size
    assert world.server.wire_bytes("/targets/models/blobs/") == size + 300_000 - resumed_at  # nothing twice but
    # the bytes in flight at the cut
    assert dev.state.installed()["model"] == {MODEL: 1} and fresh.verify(MODEL) == []


def test_a_model_that_fails_its_smoke_test_is_never_activated(world: World) -> None:
    broken = fleet.broken_tree(world.v1, world.tmp / "v3")
    fleet.add_model(world.repo, broken, fleet.Release(version=3))
    fleet.publish(world.repo)
    before = world.onnx_sha()
    status = world.dev.agent.poll_once()
    assert world.onnx_sha() == before == world.sha_of(world.v1)
    refused = world.dev.state.refused()
    assert list(refused) == [f"models/{MODEL}/3/manifest.json"] and "smoke test failed" in refused[
        f"models/{MODEL}/3/manifest.json"]
    assert status.last_error is None  # a refused update is not a failed check
    world.server.reset_counts()
    world.dev.agent.poll_once()  # v3 is not retried (v2, still newer than what runs, is installed instead)
    assert not [p for p, _ in world.server.requests if f"/{MODEL}/3/" in p or world.sha_of(broken) in p]
    assert world.dev.state.installed()["model"] == {MODEL: 2}


def test_a_model_that_fails_the_health_check_after_the_switch_is_rolled_back(world: World) -> None:
    world.health[0] = "api not ready"
    world.dev.agent.poll_once()
    assert world.onnx_sha() == world.sha_of(world.v1)
    assert world.dev.state.installed()["model"] == {}
    events = world.dev.events()
    assert events[-1]["type"] == "rollback" and "api not ready" in events[-1]["detail"]
    assert world.dev.state.job() is None


def test_a_configuration_bundle_is_validated_applied_and_reloaded(world: World, tmp_path: Path) -> None:
    reloads: list[str] = []
    world.dev.agent.installer.hooks.reload = lambda: reloads.append((world.dev.state_dir / "config.toml").read_text())
    object.__setattr__(world.dev.agent, "device", world.dev.agent.device.__class__(
        "0.1.0", frozenset({"test-profile"}), {}, "lobby", None))
    bundle = tmp_path / "lobby.toml"
    bundle.write_text('[voice]\nhangover_ms = 480\n')
    fleet.add_config(world.repo, "lobby", bundle, fleet.Release())
    with pytest.raises(Exception, match="hangover_ms"):
        bad = tmp_path / "bad.toml"
        bad.write_text('[voice]\nhangover_ms = "long"\n')
        fleet.add_config(world.repo, "lobby", bad, fleet.Release())
    fleet.publish(world.repo)
    status = world.dev.agent.poll_once()
    assert status.last_error is None, status.last_error
    assert reloads == ['[voice]\nhangover_ms = 480\n']
    assert world.dev.state.installed()["config"] == {"lobby": 1}
    from appliance.config import load_settings

    local = tmp_path / "local.toml"
    local.write_text(f'[fleet]\nstate_dir = "{world.dev.state_dir}"\n[voice]\nhangover_ms = 300\n')
    assert load_settings(local).voice.hangover_ms == 480  # the fleet's layer over the local file


def test_a_bundle_may_not_change_where_updates_come_from(world: World, tmp_path: Path) -> None:
    object.__setattr__(world.dev.agent, "device", world.dev.agent.device.__class__(
        "0.1.0", frozenset({"test-profile"}), {}, "lobby", None))
    bundle = tmp_path / "evil.toml"
    bundle.write_text('[fleet]\nrepository = "http://127.0.0.1:9/"\nroot = "/tmp/x.json"\n')
    fleet.add_config(world.repo, "lobby", bundle, fleet.Release())
    fleet.publish(world.repo)
    world.dev.agent.poll_once()
    assert not (world.dev.state_dir / "config.toml").exists()
    assert "fleet section" in world.dev.state.refused()["config/lobby/1.toml"]


def test_firmware_is_verified_and_staged_on_a_system_without_slots(world: World, tmp_path: Path) -> None:
    object.__setattr__(world.dev.agent, "device", world.dev.agent.device.__class__(
        "0.1.0", frozenset({"test-profile"}), {}, None, "qemu-x86"))
    image = tmp_path / "rootfs.img"
    image.write_bytes(b"\x53\xef" * 50_000)
    fleet.add_firmware(world.repo, "qemu-x86", image, fleet.Release())
    fleet.publish(world.repo)
    status = world.dev.agent.poll_once()
    assert status.staged == "firmware/qemu-x86/1/rootfs.img"
    assert any("no A/B slots" in n for n in status.notes)
    assert world.dev.events()[-1]["type"] == "staged"
    world.server.reset_counts()
    world.dev.agent.poll_once()
    assert world.server.wire_bytes("/targets/firmware/") == 0  # staged once, not fetched on every poll


# ---- attacks: each refused, the model in use untouched ---------------------------------------------------

def _served(world: World, name: str) -> bytes:
    return (world.repo.metadata_dir / name).read_bytes()


def attack_rollback(world: World) -> None:
    old = _served(world, "timestamp.json")
    fleet.publish(world.repo)
    world.dev.agent.poll_once()  # the device sees the newer timestamp (and installs v2: reset below)
    world.dev.store.activate(MODEL, world.v1)
    world.dev.state.root.joinpath("installed.json").unlink()
    world.server.faults.replace["/metadata/timestamp.json"] = old


def attack_freeze(world: World) -> None:
    world.repo.now = lambda: datetime.now(UTC) - timedelta(days=3)
    world.repo.do_timestamp(force=True)  # valid signature, expired two days ago


def attack_mix_and_match(world: World) -> None:
    version = world.repo.snapshot().version
    world.server.faults.replace[f"/metadata/{version}.snapshot.json"] = _served(world, f"{version - 1}.snapshot.json")


def attack_tampered_target(world: World) -> None:
    sha = world.sha_of(world.v2)
    delta = next((world.repo.targets_dir / "models" / "deltas").glob("*.zst"))
    data = bytearray(delta.read_bytes())
    data[-5] ^= 0xFF
    world.server.faults.replace[f"/targets/models/deltas/{delta.name}"] = bytes(data)
    blob = world.repo.targets_dir / "models" / "blobs" / f"{sha}.{sha}"
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    world.server.faults.replace[f"/targets/models/blobs/{blob.name}"] = bytes(data)


def attack_endless_data(world: World) -> None:
    (world.repo.targets_dir / "models" / "deltas").rename(world.tmp / "no-deltas")  # force the full file
    world.server.faults.endless = "/targets/models/blobs/"


def attack_wrong_signature(world: World) -> None:
    md = Metadata.from_file(str(world.repo.metadata_dir / "timestamp.json"))
    assert isinstance(md.signed, Timestamp)
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())  # an attacker's key, not in root
    world.server.faults.replace["/metadata/timestamp.json"] = md.to_bytes()


def attack_too_few_root_signatures(world: World) -> None:
    md = Metadata.from_file(str(world.repo.metadata_dir / "1.root.json"))
    md.signed.version = 2
    md.signed.roles["timestamp"].keyids = []
    md.signatures.clear()
    md.sign(world.repo.signer(world.keys["root-1"].keyid))  # one of the two the threshold needs
    world.server.faults.replace["/metadata/2.root.json"] = md.to_bytes()


def attack_delegation_outside_its_paths(world: World) -> None:
    evil = fleet.broken_tree(world.v1, world.tmp / "evil")
    manifest = json.loads((evil / "manifest.json").read_text())
    from appliance.release.publish import add_blob

    add_blob(world.repo, "config", f"models/{MODEL}/9/manifest.json", evil / "manifest.json",
             {"kind": "model", "model_id": MODEL, "version": 9, "tags": [], "min_appliance": "0"})
    assert manifest["files"]
    fleet.publish(world.repo)


ATTACKS = [attack_rollback, attack_freeze, attack_mix_and_match, attack_tampered_target, attack_endless_data,
           attack_wrong_signature, attack_too_few_root_signatures, attack_delegation_outside_its_paths]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__.removeprefix("attack_") for a in ATTACKS])
def test_attacks_are_refused_and_the_model_in_use_is_untouched(world: World, attack) -> None:
    attack(world)
    world.server.reset_counts()
    status = world.dev.agent.poll_once()
    assert world.dev.store.verify(MODEL) == []
    world.events_follow_the_schema()
    if attack is attack_delegation_outside_its_paths:  # the lawful v2 installs; the config role's v9 never
        assert any("outside" in why for why in world.dev.agent.client.ignored), world.dev.agent.client.ignored
        assert status.last_error is None and world.dev.state.installed()["model"] == {MODEL: 2}
        return
    assert status.last_error, "the attack was not noticed"
    assert world.onnx_sha() == world.sha_of(world.v1), "the model in use changed"
    assert world.dev.state.installed()["model"] == {}
    assert not list(world.dev.store.staging.glob("*.part")) or attack is attack_endless_data
    print(attack.__name__, "->", status.last_error)

