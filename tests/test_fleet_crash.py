"""Power cuts during updates: the agent killed with SIGKILL at random points of installs (download, verify,
activate, check, rollback), a hundred times. After every kill the store verifies, the active version of the
model is a complete old or new one, and the next start resumes the interrupted install. A disk that fills
during a download (a small tmpfs in a mount namespace of our own) gives a clear error and activates nothing."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.bench.repo_server import RepoServer
from appliance.models import ModelStore, load_catalog
from appliance.models.store import sha256_file
from tests.support import fleet

KILLS = int(os.environ.get("FLEET_KILLS", "100"))
ROOT = Path(__file__).resolve().parents[1]


def _worker(store: Path, state: Path, url: str, root: Path, health: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.support.fleet_worker", str(store), str(state), url,
                             str(root), health], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_a_hundred_kills_during_installs_leave_a_complete_model_and_the_agent_resumes(tmp_path: Path) -> None:
    made = fleet.two_versions(tmp_path, b"after the power cut", offer_v1=False)
    repo, store, v1, v2 = made.repo, made.store, made.v1, made.v2
    fleet.publish(repo)
    assert not (repo.targets_dir / "models" / "deltas").exists()  # no v1 there: the whole file travels
    good = {sha256_file(t / "onnx" / "model.onnx") for t in (v1, v2)}
    state, rng = tmp_path / "state", random.Random(20261204)
    steps_seen: dict[str, int] = {}
    outcomes = {"installed": 0, "rolled back": 0}
    with RepoServer(tmp_path / "repo") as server:
        server.faults.delay_s = 0.04  # ~0.8 s for the model: kills land in downloads too
        root = repo.metadata_dir / "1.root.json"
        for n in range(KILLS):
            health = "fail" if n % 3 == 2 else "ok"  # every third install fails its check: rollbacks get killed
            proc = _worker(store.root, state, server.url, root, health)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "polling", n
            time.sleep(rng.uniform(0.0, 1.8))  # an install takes ~1.5 s here: download, smoke, switch, check
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            job = fleet.AgentState(state).job()
            steps_seen[job.step if job else "none"] = steps_seen.get(job.step if job else "none", 0) + 1
            # the invariant: the store verifies and the model in use is complete, old or new
            assert store.verify(fleet.MODEL) == [], n
            assert sha256_file(store.resolve(fleet.MODEL).file("onnx", ".onnx")) in good, n
            if job is None and fleet.AgentState(state).installed()["model"]:
                outcomes["installed"] += 1
                _reset(store, state, v1)
            elif job is None and fleet.AgentState(state).refused():
                outcomes["rolled back"] += 1
                _reset(store, state, v1)
        finish = _worker(store.root, state, server.url, root, "ok")  # unkilled: resumes and completes
        out, _ = finish.communicate(timeout=120)
        assert finish.returncode == 0, out
    assert fleet.AgentState(state).job() is None
    assert store.verify(fleet.MODEL) == [] and sha256_file(store.resolve(fleet.MODEL).file("onnx", ".onnx")) in good
    print("kills by step:", steps_seen, "completed between kills:", outcomes)
    assert "download" in steps_seen, steps_seen  # kills landed inside installs
    if KILLS >= 100:  # and in every step that switches something
        assert {"activate", "check", "rollback"} <= set(steps_seen), steps_seen
        assert outcomes["installed"] and outcomes["rolled back"], outcomes


def _reset(store: ModelStore, state: Path, v1: Path) -> None:
    """Back to v1 with nothing of v2 in the store, for the next round (what a fresh device would be)."""
    store.activate(fleet.MODEL, v1)
    for name in ("installed.json", "refused.json"):
        (state / name).unlink(missing_ok=True)
    store.prune(fleet.MODEL)
    previous = store.root / "previous" / fleet.MODEL
    previous.unlink(missing_ok=True)
    store.prune(fleet.MODEL)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_a_disk_that_fills_during_a_download_is_a_clear_error_and_nothing_is_activated(tmp_path: Path) -> None:
    keys = fleet.make_keys(tmp_path / "keys", ["root", *fleet.ROLES])
    repo = fleet.new_repo(tmp_path / "repo", keys, ["root"])
    source = ModelStore(tmp_path / "source")
    source.pull(load_catalog().get(fleet.MODEL))
    fleet.add_model(repo, source.active_tree(fleet.MODEL), fleet.Release(version=1))
    fleet.publish(repo)
    script = tmp_path / "full.sh"
    store, state = tmp_path / "small", tmp_path / "state"
    store.mkdir()
    with RepoServer(tmp_path / "repo") as server:
        # a 1 MiB filesystem for the store: the 1.2 MB model cannot fit
        script.write_text(f"set -e\nmount -t tmpfs -o size=1m tmpfs {store}\n"
                          f"{sys.executable} -m tests.support.fleet_worker {store} {state} {server.url} "
                          f"{repo.metadata_dir / '1.root.json'} ok || true\n"
                          f"echo free=$(df --output=avail -B1 {store} | tail -1)\n"
                          f"find {store} -mindepth 2 | sed 's/^/in-store: /'\n")
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", str(script)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "disk full while downloading" in out and "partial file was removed" in out, out
    assert "Traceback" not in out, out
    free = int(out.split("free=")[1].split()[0])
    assert free > 900_000, out  # the partial download's space was given back
    kept = [line for line in out.splitlines() if line.startswith("in-store: ")]
    assert not [k for k in kept if "/active/" in k or "/blobs/sha256/" in k or k.endswith(".part")], kept
    events = fleet.EventLog(state / "events.jsonl").read()
    assert events[-1]["type"] == "error" and "disk full" in events[-1]["detail"]
