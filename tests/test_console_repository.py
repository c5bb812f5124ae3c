"""The console and the signed update repository: a release must name targets the repository publishes (read
from its signed metadata), and the console keeps the timestamp fresh with the online snapshot and timestamp
keys only, saying so clearly when a key is locked."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from appliance.console import accounts
from appliance.console.app import make_app
from appliance.console.authority import load_or_make
from appliance.console.db import open_database, transaction
from appliance.console.repository import Published, RepositoryLinkError
from appliance.console.schema import AuditEntry
from tests.support import fleet

PASSWORD = "correct horse battery"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    keys = fleet.make_keys(tmp_path / "keys", ["root", *fleet.ROLES])
    repo = fleet.new_repo(tmp_path / "repo", keys, ["root"])
    bundle = tmp_path / "lobby.toml"
    bundle.write_text("[voice]\nhangover_ms = 150\n")
    fleet.add_config(repo, "lobby", bundle, fleet.Release(version=1))
    fleet.publish(repo)
    return tmp_path / "repo"


def test_a_release_must_name_published_targets(repository: Path, tmp_path: Path) -> None:
    published = Published(repository, [])
    assert published.versions("config", "lobby") == [1]
    assert published.missing({"config": {"lobby": 1}}) == []
    assert published.missing({"config": {"lobby": 2}, "model": {"silero-vad-v6": 3}}) == [
        "config lobby v2 is not published (published: v1)", "model silero-vad-v6 v3 is not published (published: none)"]
    sessions = open_database(f"sqlite:///{tmp_path / 'console.db'}")
    with transaction(sessions) as session:
        accounts.add_user(session, "ops", "operator", PASSWORD)
    with TestClient(make_app(sessions, load_or_make(tmp_path / "ca"), published=published)) as client:
        token = client.post("/api/v1/login", json={"name": "ops", "password": PASSWORD}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        refused = client.post("/api/v1/releases", json={"name": "r2", "targets": {"config": {"lobby": 2}}},
                              headers=headers)
        assert refused.status_code == 409 and "config lobby v2 is not published" in refused.json()["detail"]
        made = client.post("/api/v1/releases", json={"name": "r1", "targets": {"config": {"lobby": 1}}},
                           headers=headers)
        assert made.status_code == 201, made.text
    with pytest.raises(RepositoryLinkError, match="no metadata/"):
        Published(tmp_path, [])


def test_the_console_keeps_the_timestamp_fresh_with_online_keys(repository: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    published = Published(repository, [tmp_path / "keys"])
    before = published.repo.timestamp().version
    assert published.refresh() is None  # a day left: nothing to do
    with pytest.raises(RepositoryLinkError, match="APPLIANCE_KEY_PASSPHRASE"):  # the console never asks
        published.refresh(published.expires() - timedelta(hours=1))
    monkeypatch.setenv("APPLIANCE_KEY_PASSPHRASE", fleet.PASSPHRASE)
    old_expiry = published.expires()
    snapshot, timestamp = published.refresh(old_expiry - timedelta(hours=1)) or (0, 0)
    assert timestamp == before + 1 and snapshot > 0 and published.expires() >= old_expiry

    real_now = published.repo.now
    published.repo.now = lambda: real_now() - timedelta(hours=23)  # a timestamp signed 23 h ago: 1 h left
    published.refresh(published.expires())
    published.repo.now = real_now
    stale = published.expires()
    sessions = open_database(f"sqlite:///{tmp_path / 'console.db'}")
    with TestClient(make_app(sessions, load_or_make(tmp_path / "ca"), tick_s=0.2, published=published)):
        for _ in range(100):  # the console's own tick re-signs it, and audits that
            with transaction(sessions) as session:
                if session.scalar(select(AuditEntry).where(AuditEntry.action == "repository.refresh")):
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the console's tick did not re-sign the repository")
    assert published.expires() - stale > timedelta(hours=20)
