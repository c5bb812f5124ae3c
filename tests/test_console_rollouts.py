"""Staged rollouts end to end: ten update agents (one process, each with its own store, state and device key)
enrolled at the console, a signed repository offering v2 of a real model (Silero VAD) served on loopback, and a
release rolled out to their group in waves. Three devices fail their health check in the second wave: the wave
halts by itself, those three roll back, the others keep v2. Also: approval between waves, pause and abort, a
silent device's deadline, wave plans, and a populated database migrated without loss."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.bench.repo_server import RepoServer
from appliance.config import Settings
from appliance.console import accounts, audit, rollouts
from appliance.console.app import make_app
from appliance.console.authority import load_or_make
from appliance.console.db import head, make_engine, open_database, revision, transaction, upgrade
from appliance.console.schema import AuditEntry, Device, Rollout, User
from appliance.device import Device as Runtimes
from appliance.fleet.enrolment import ConsoleLink
from appliance.fleet.enrolment import enrol as device_enrol
from appliance.fleet.identity import load_or_make as device_key
from appliance.fleet.install import Hooks
from appliance.models import ModelStore, load_catalog
from tests.support import fleet

MODEL = fleet.MODEL
PASSWORD = "correct horse battery"
CONSOLE = "http://testserver"


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtimes]:
    dev = Runtimes.open(Settings(models={"store": tmp_path_factory.mktemp("runtime-store")}))  # type: ignore[arg-type]
    yield dev
    dev.close()


@dataclass
class Fleet:
    client: TestClient
    sessions: sessionmaker[Session]
    operator: dict[str, str]
    devices: list[fleet.Device]
    ids: list[str]
    sick: set[str]  # devices whose health check fails after an update

    def poll(self) -> None:
        for dev in self.devices:
            dev.agent.poll_once()

    def rollout(self, number: int) -> dict:
        return dict(self.client.get(f"/api/v1/rollouts/{number}", headers=self.operator).json())

    def poll_wave(self, number: int, wave: int) -> None:
        """Only that wave's devices check (all polling at once lets a later wave start in the same round)."""
        members = {m["device"] for m in self.rollout(number)["devices"] if m["wave"] == wave}
        for device_id, dev in zip(self.ids, self.devices, strict=True):
            if device_id in members:
                dev.agent.poll_once()


@pytest.fixture
def ten(tmp_path: Path, runtimes: Runtimes) -> Iterator[Fleet]:
    keys = fleet.make_keys(tmp_path / "keys", ["root", *fleet.ROLES])
    repo = fleet.new_repo(tmp_path / "repo", keys, ["root"])
    base = ModelStore(tmp_path / "base-store")
    base.pull(load_catalog().get(MODEL))
    v1 = base.active_tree(MODEL)
    assert v1 is not None
    fleet.add_model(repo, v1, fleet.Release(version=1))
    fleet.add_model(repo, fleet.variant_tree(v1, tmp_path / "v2", b"v2"), fleet.Release(version=2))
    fleet.publish(repo)
    sessions = open_database(f"sqlite:///{tmp_path / 'console.db'}")
    with transaction(sessions) as session:
        accounts.add_user(session, "admin", "admin", PASSWORD)
        accounts.add_user(session, "ops", "operator", PASSWORD)
    sick: set[str] = set()
    with RepoServer(tmp_path / "repo") as server, \
            TestClient(make_app(sessions, load_or_make(tmp_path / "ca"), tick_s=3600)) as client:
        admin = login(client, "admin")
        devices, ids = [], []
        for n in range(10):
            home = tmp_path / f"device-{n}"
            key = device_key(home)
            token = client.post("/api/v1/enrolment-tokens", json={"group": "lobby"}, headers=admin).json()["token"]
            device_enrol(CONSOLE, key, home / "fleet", client, token)
            store = ModelStore(home / "store")
            store.pull(load_catalog().get(MODEL))
            hooks = Hooks(smoke=runtimes.trial, health=lambda job, me=key.id: "health check: 3 calls dropped"
                          if me in sick else None)
            dev = fleet.device(store, home / "fleet", server.url, tmp_path / "repo" / "metadata" / "1.root.json",
                               hooks)
            dev.agent.link = ConsoleLink(CONSOLE, key, client, lambda: {"profile": "test-profile", "health": "ok"})
            devices.append(dev)
            ids.append(key.id)
        yield Fleet(client, sessions, login(client, "ops"), devices, ids, sick)


def login(client: TestClient, name: str) -> dict[str, str]:
    reply = client.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def running(dev: fleet.Device) -> int | None:
    return dev.state.installed()["model"].get(MODEL)


def test_a_wave_with_failing_devices_halts_they_roll_back_the_rest_keep_v2(ten: Fleet) -> None:
    ten.poll()  # enrolled and managed: v2 is signed and offered, but nobody pinned it yet
    assert [running(d) for d in ten.devices] == [None] * 10
    listed = ten.client.get("/api/v1/devices", params={"group": "lobby"}, headers=ten.operator).json()
    assert len(listed) == 10 and all(d["last_seen"] for d in listed)

    made = ten.client.post("/api/v1/releases", json={"name": "vad-2", "targets": {"model": {MODEL: 2}}},
                           headers=ten.operator)
    assert made.status_code == 201, made.text
    started = ten.client.post("/api/v1/rollouts", json={"release": "vad-2", "group": "lobby", "waves": [2, "100%"],
                                                        "failure_threshold": 0.2}, headers=ten.operator)
    assert started.status_code == 201, started.text
    number = started.json()["id"]
    by_wave = {m["device"]: m["wave"] for m in ten.rollout(number)["devices"]}
    second = sorted(d for d, w in by_wave.items() if w == 2)
    assert sorted(by_wave.values()) == [1, 1] + [2] * 8
    ten.sick.update(second[:3])

    ten.poll_wave(number, 1)  # wave 1 installs v2 and reports
    now = ten.rollout(number)
    assert [w["done"] for w in now["waves"]] == [2, 0] and now["wave"] == 2  # and the console starts wave 2
    ten.poll()  # wave 2: three devices fail their health check after the switch and roll back
    now = ten.rollout(number)
    assert now["state"] == "halted" and "of 8 devices failed" in now["reason"], now
    states = {m["device"]: (m["state"], m["detail"]) for m in now["devices"]}
    for device_id, dev in zip(ten.ids, ten.devices, strict=True):
        if device_id in ten.sick:
            assert running(dev) is None and states[device_id][0] == "failed", states[device_id]
            assert "failed on the device" in states[device_id][1]
            assert dev.events()[-1]["type"] == "rollback" and "3 calls dropped" in dev.events()[-1]["detail"]
        else:
            assert running(dev) == 2 and states[device_id][0] == "done", (device_id, states[device_id])
    assert now["waves"][1]["failed"] == 3 and now["waves"][1]["done"] == 5

    ten.poll()  # halted: nothing moves; the failed ones are told to run what they ran before
    assert [running(d) for d in ten.devices].count(2) == 7
    with transaction(ten.sessions) as session:
        actions = [e.detail.get("what", "") for e in session.scalars(select(AuditEntry))]
        assert any(a.startswith("halted: wave 2") for a in actions), actions
        assert audit.check(session) == []


def test_approval_pause_and_abort(ten: Fleet) -> None:
    ten.client.post("/api/v1/releases", json={"name": "vad-2", "targets": {"model": {MODEL: 2}}},
                    headers=ten.operator)
    number = ten.client.post("/api/v1/rollouts", json={"release": "vad-2", "group": "lobby", "waves": [1, "100%"],
                                                       "approval": True}, headers=ten.operator).json()["id"]
    again = ten.client.post("/api/v1/rollouts", json={"release": "vad-2", "group": "lobby"}, headers=ten.operator)
    assert again.status_code == 409 and "in progress" in again.json()["detail"]
    ten.poll_wave(number, 1)
    assert [running(d) for d in ten.devices].count(2) == 1
    now = ten.rollout(number)
    assert now["state"] == "approval" and "approve the next" in now["reason"]
    ten.poll()
    assert [running(d) for d in ten.devices].count(2) == 1  # nobody else moves without the approval
    pause = ten.client.post(f"/api/v1/rollouts/{number}/pause", headers=ten.operator)
    assert pause.json()["state"] == "paused"
    assert ten.client.post(f"/api/v1/rollouts/{number}/approve", headers=ten.operator).status_code == 409
    resumed = ten.client.post(f"/api/v1/rollouts/{number}/resume", headers=ten.operator).json()
    assert resumed["state"] == "approval"  # back to waiting for the approval it had not had
    assert ten.client.post(f"/api/v1/rollouts/{number}/approve", headers=ten.operator).json()["wave"] == 2
    ten.poll()
    assert [running(d) for d in ten.devices].count(2) == 10
    assert ten.rollout(number)["state"] == "done"

    ten.client.post("/api/v1/releases", json={"name": "vad-1", "targets": {"model": {MODEL: 1}}},
                    headers=ten.operator)
    back = ten.client.post("/api/v1/rollouts", json={"release": "vad-1", "group": "lobby", "waves": ["50%", "100%"]},
                           headers=ten.operator).json()["id"]
    ten.poll_wave(back, 1)
    assert sorted(running(d) for d in ten.devices) == [1] * 5 + [2] * 5
    assert ten.client.post(f"/api/v1/rollouts/{back}/abort", headers=ten.operator).json()["state"] == "aborted"
    ten.poll()  # aborted: every device goes back to what it ran before the rollout
    assert [running(d) for d in ten.devices] == [2] * 10


def test_a_silent_device_fails_at_its_deadline(ten: Fleet) -> None:
    ten.client.post("/api/v1/releases", json={"name": "vad-2", "targets": {"model": {MODEL: 2}}},
                    headers=ten.operator)
    number = ten.client.post("/api/v1/rollouts", json={"release": "vad-2", "group": "lobby", "waves": ["100%"],
                                                       "deadline_s": 60, "failure_threshold": 0.5},
                             headers=ten.operator).json()["id"]
    for dev in ten.devices[:8]:
        dev.agent.poll_once()
    with transaction(ten.sessions) as session:
        found = session.get(Rollout, number)
        assert found is not None
        lines = rollouts.tick(session, found, datetime.now(UTC) + timedelta(seconds=61))
    assert sum("not done within 60 s" in line for line in lines) == 2 and lines[-1] == "done", lines


@pytest.mark.parametrize("sizes, devices, counts", [
    ([1, "50%", "100%"], 10, [1, 5, 10]), (["10%"], 3, [3]), ([5, 5, 20], 4, [4, 4, 4]), ([1, 2], 2, [1, 2]),
])
def test_wave_plans(sizes: list[int | str], devices: int, counts: list[int]) -> None:
    assert rollouts.plan(sizes, devices) == counts


@pytest.mark.parametrize("sizes, message", [([], "at least one wave"), (["0%"], "above 0"), ([0], "at least one"),
                                            (["x%"], "a count or a percentage")])
def test_bad_wave_plans_are_refused(sizes: list[int | str], message: str) -> None:
    with pytest.raises(rollouts.RolloutError, match=message):
        rollouts.plan(sizes, 10)


def test_a_populated_database_is_migrated_without_loss(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'console.db'}")
    upgrade(engine, "r0001")
    with transaction(sessionmaker(engine)) as session:
        accounts.add_user(session, "admin", "admin", PASSWORD)
        session.add(Device(id="0123456789abcdef", public_key="00" * 32, certificate="pem", serial="1", group="g",
                           tags={"tags": ["a"]}, enrolled=datetime.now(UTC), report={"installed": {}}))
        audit.record(session, "admin", "user.add", "user:admin")
    upgrade(engine)
    assert revision(engine) == head() != "r0001"
    with transaction(sessionmaker(engine)) as session:
        assert session.scalar(select(User)).name == "admin"  # type: ignore[union-attr]
        assert session.get(Device, "0123456789abcdef").tags == {"tags": ["a"]}  # type: ignore[union-attr]
        assert audit.check(session) == [] and session.scalar(select(Rollout)) is None
