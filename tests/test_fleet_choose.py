"""What the agent chooses and when it polls: pure functions, no network (tags, pins, the appliance's version,
what is installed or failed before; jitter and backoff), and the settings that start it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from appliance.config import Settings
from appliance.config.loader import ConfigError, validate_toml
from appliance.fleet.agent import DeviceFacts, Schedule, choose
from appliance.services.plan import plan

DEVICE = DeviceFacts("0.3.0", frozenset({"rpi5", "lobby"}), {}, "front-desk", "rpi5")


def target(path: str, **custom: object) -> TargetFile:
    return TargetFile(10, {"sha256": "00" * 32}, path, {"custom": {"tags": [], "min_appliance": "0", **custom}})


def model(name: str, version: int, **extra: object) -> TargetFile:
    return target(f"models/{name}/{version}/manifest.json", kind="model", model_id=name, version=version, **extra)


def paths(chosen: list[TargetFile]) -> list[str]:
    return [t.path for t in chosen]


def test_the_newest_fitting_version_of_each_model_is_chosen_once() -> None:
    offers = [model("asr", 1), model("asr", 3), model("asr", 2), model("vad", 5, tags=["rpi4"]),
              model("vad", 4, tags=["lobby"]), model("tts", 9, min_appliance="0.4")]
    assert paths(choose(offers, DEVICE, {}, [])) == ["models/asr/3/manifest.json", "models/vad/4/manifest.json"]


def test_installed_refused_and_pinned_versions_are_respected() -> None:
    offers = [model("asr", 1), model("asr", 2), model("asr", 3)]
    assert choose(offers, DEVICE, {"model": {"asr": 3}}, []) == []
    assert paths(choose(offers, DEVICE, {"model": {"asr": 1}}, ["models/asr/3/manifest.json"])) == [
        "models/asr/2/manifest.json"]
    pinned = DeviceFacts("0.3.0", DEVICE.tags, {"asr": 1}, None, None)
    assert paths(choose(offers, pinned, {"model": {"asr": 3}}, [])) == ["models/asr/1/manifest.json"]  # a rollout
    # held back by the group is a deliberate downgrade


def test_config_and_firmware_follow_the_device_s_bundle_and_board_after_the_models() -> None:
    offers = [target("firmware/rpi5/2/root.img", kind="firmware", board="rpi5", version=2),
              target("firmware/x86/7/root.img", kind="firmware", board="x86", version=7),
              target("config/front-desk/4.toml", kind="config", name="front-desk", version=4),
              target("config/other/8.toml", kind="config", name="other", version=8), model("asr", 1)]
    assert paths(choose(offers, DEVICE, {}, [])) == ["models/asr/1/manifest.json", "config/front-desk/4.toml",
                                                     "firmware/rpi5/2/root.img"]
    assert "firmware/rpi5/2/root.img" not in paths(choose(offers, DEVICE, {}, [], staged="firmware/rpi5/2/root.img"))


def test_polls_spread_with_jitter_and_back_off_after_failures() -> None:
    schedule, rng = Schedule(interval_s=100, jitter=0.2, backoff_max_s=1000), random.Random(1)
    waits = [schedule.next_wait(0, rng) for _ in range(200)]
    assert 80 <= min(waits) < 90 and 110 < max(waits) <= 120
    assert 160 <= schedule.next_wait(1, rng) <= 240
    assert 800 <= schedule.next_wait(9, rng) <= 1200  # capped at backoff_max_s (± jitter)


def test_the_agent_runs_when_a_repository_is_set_and_needs_its_root(tmp_path: Path) -> None:
    assert "agent" not in [s.name for s in plan(Settings())]
    fleet = {"repository": "http://127.0.0.1:1/", "root": tmp_path / "root.json"}
    with_repo = Settings(fleet=fleet)  # type: ignore[arg-type]
    assert "agent" in [s.name for s in plan(with_repo)]
    bad = tmp_path / "bad.toml"
    bad.write_text('[fleet]\nrepository = "http://127.0.0.1:1/"\n')
    with pytest.raises(ConfigError, match="fleet.repository needs fleet.root"):
        validate_toml(bad)
