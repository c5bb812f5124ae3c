"""`appliance release …` as a publisher runs it: keys, a repository with a root threshold of two, a model from
the store, a configuration bundle, publishing, status, and a root rotation that a device trusting the first
root follows. Mistakes are one-line errors: a key inside the repository, a wrong passphrase, too few keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from appliance.bench.repo_server import RepoServer
from appliance.fleet.install import Hooks
from appliance.models import ModelStore, load_catalog
from tests.support import fleet
from tests.support.cli import appliance

PASS = {"APPLIANCE_KEY_PASSPHRASE": fleet.PASSPHRASE}


def test_a_publisher_builds_publishes_and_rotates_root_and_a_device_follows(tmp_path: Path) -> None:
    keys, offline, repo = tmp_path / "keys", tmp_path / "offline", tmp_path / "repo"
    for name in ("root-1", "root-2", "root-3"):
        made = appliance("release", "keygen", name, "--keys", str(offline), env=PASS)
        assert made.returncode == 0, made.stderr
    for name in fleet.ROLES:
        assert appliance("release", "keygen", name, "--keys", str(keys), env=PASS).returncode == 0
    inside = appliance("release", "keygen", "sneaky", "--keys", str(repo / "keys"), "--repo", str(repo), env=PASS)
    assert inside.returncode == 2 and "never enter the repository" in inside.stderr
    assert (offline / "root-1.pem").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED PRIVATE KEY" in (offline / "root-1.pem").read_bytes()

    both = ["--keys", str(keys), "--keys", str(offline)]
    made = appliance("release", "init", str(repo), *both, "--root", "root-1", "--root", "root-2", "--threshold", "2",
                     env=PASS)
    assert made.returncode == 0, made.stderr
    assert not list(repo.rglob("*.pem"))
    wrong = appliance("release", "publish", str(repo), "--keys", str(keys),
                      env={"APPLIANCE_KEY_PASSPHRASE": "not the passphrase"})
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr

    store = tmp_path / "store"
    ModelStore(store).pull(load_catalog().get(fleet.MODEL))
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\nstore = "{store}"\n')
    added = appliance("--config", str(config), "release", "add-model", str(repo), "--keys", str(keys),
                      "--from-store", fleet.MODEL, "--tag", "x86-generic", "--language", "en", env=PASS)
    assert added.returncode == 0 and added.stdout.strip() == f"models/{fleet.MODEL}/1/manifest.json", added.stderr
    bundle = tmp_path / "lobby.toml"
    bundle.write_text("[voice]\nhangover_ms = 400\n")
    assert appliance("release", "add-config", str(repo), "lobby", str(bundle), "--keys", str(keys),
                     env=PASS).returncode == 0
    bundle.write_text("[voice]\nhangover_msec = 400\n")
    invalid = appliance("release", "add-config", str(repo), "lobby", str(bundle), "--keys", str(keys), env=PASS)
    assert invalid.returncode == 2 and "hangover_msec: unknown key" in invalid.stderr
    published = appliance("release", "publish", str(repo), "--keys", str(keys), env=PASS)
    assert published.returncode == 0 and "snapshot v2" in published.stdout, published.stderr
    shown = appliance("release", "status", str(repo))
    assert shown.returncode == 0 and "models" in shown.stdout and "timestamp" in shown.stdout

    # rotation: root-1 out, root-3 in; needs the old two and the new two
    short = tmp_path / "short"
    shutil.copytree(offline, short)
    for suffix in (".pem", ".pub.json"):
        (short / f"root-1{suffix}").unlink()
    refused = appliance("release", "rotate-root", str(repo), "--keys", str(short), "--add", "root-3", env=PASS)
    assert refused.returncode == 2 and "2 needed" in refused.stderr, refused.stderr
    rotated = appliance("release", "rotate-root", str(repo), *both, "--add", "root-3", "--remove", "root-1",
                        env=PASS)
    assert rotated.returncode == 0 and "root v2" in rotated.stdout, rotated.stderr
    assert appliance("release", "publish", str(repo), "--keys", str(keys), env=PASS).returncode == 0
    root2 = json.loads((repo / "metadata" / "2.root.json").read_text())
    assert len(root2["signatures"]) == 3 and root2["signed"]["roles"]["root"]["threshold"] == 2

    device_store = ModelStore(tmp_path / "device-store")
    with RepoServer(repo) as server:
        dev = fleet.device(device_store, tmp_path / "state", server.url, repo / "metadata" / "1.root.json",
                           Hooks(smoke=lambda files: None, health=lambda job: None),
                           tags=frozenset({"x86-generic"}))
        status = dev.agent.poll_once()
    assert status.last_error is None, status.last_error
    assert (tmp_path / "state" / "metadata" / "root_history" / "2.root.json").exists()  # followed the chain
    assert dev.state.installed()["model"] == {fleet.MODEL: 1} and device_store.verify(fleet.MODEL) == []
