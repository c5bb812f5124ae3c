"""The offline wheelhouse (`make wheelhouse`): built from the locks, then a new venv is made from it alone
inside a network namespace with no network at all, and the appliance it holds provisions its models from
their packages and passes `appliance doctor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.image import wheelhouse
from appliance.image.wheelhouse import WheelhouseError

ROOT = Path(__file__).resolve().parents[1]


def no_network_namespace() -> str | None:
    """Why this host cannot give a process a network namespace of its own (None: it can)."""
    done = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"unshare exited {done.returncode}")


def offline(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a shell command in a new network namespace: only a downed loopback, no route anywhere."""
    return subprocess.run(["unshare", "--net", "sh", "-ec", command], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_a_venv_from_the_wheelhouse_alone_runs_doctor_with_no_network(tmp_path: Path) -> None:
    reason = no_network_namespace()
    if reason:
        pytest.skip(f"this host gives no network namespace ({reason})")
    house = wheelhouse.build(ROOT, tmp_path / "wheelhouse")
    names = {p.name.split("-")[0].lower() for p in house.wheels}
    assert {"appliance", "systemd_python", "pyaudio", "onnxruntime", "ctranslate2", "pip"} <= names
    assert {n.rsplit("-", 1)[0].lower() for n in house.built} == {"pyaudio", "systemd-python"}  # the only sdists
    pinned = (house.path / "requirements.txt").read_text()
    assert "appliance==" in pinned and "--hash=sha256:" in pinned and "pytest" not in pinned  # device set only

    venv, store = tmp_path / "venv", tmp_path / "store"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    config = tmp_path / "appliance.toml"
    config.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APPLIANCE_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", APPLIANCE_CONFIG=str(config),
               APPLIANCE_MODELS__STORE=str(store), PATH=f"{venv}/bin:{env['PATH']}")
    pip = f"pip install -q --no-index --find-links {house.path} --require-hashes"
    done = offline(f"{pip} -r {house.path}/build.txt; {pip} -r {house.path}/requirements.txt; "
                   "cd /; appliance models pull; appliance doctor --json", env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert report["models"] and all(m["runtime"] for m in report["models"]), report["models"]
    assert report["store"]["path"] == str(store)
    where = subprocess.run([f"{venv}/bin/python", "-c", "import appliance; print(appliance.__file__)"],
                           capture_output=True, text=True, env=env, cwd="/", check=True).stdout
    assert where.startswith(str(venv))  # the wheel's copy, not this checkout


def test_a_checkout_without_its_locks_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WheelhouseError, match="device.txt is missing; fix: "):
        wheelhouse.build(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
