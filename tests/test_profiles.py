"""Profiles are valid, name only known runtimes and catalog models, and broken ones are reported clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.hw import load_profiles
from appliance.hw.profiles import TASKS, ProfileError
from appliance.models import Catalog
from appliance.runtime import BACKEND_TYPES

DESIGN_CARD = {"generic-x86_64", "intel-core-ultra", "nvidia-jetson-orin", "raspberry-pi-5", "rockchip-rk3588",
               "riscv64", "apple-silicon", "qualcomm", "x86-kiosk"}


def test_design_card_profiles_exist_and_are_complete(catalog: Catalog) -> None:
    profiles = {p.name: p for p in load_profiles()}
    assert set(profiles) >= DESIGN_CARD
    runtimes = {b.name for b in BACKEND_TYPES}
    ids = {m.id for m in catalog.models}
    for profile in profiles.values():
        assert set(profile.runtimes) == set(TASKS), profile.name
        for candidates in profile.runtimes.values():
            assert candidates and all(c.runtime in runtimes for c in candidates), profile.name
        assert set(profile.default_models) <= ids, profile.name


def test_bad_profile_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "board.yaml").write_text(
        "name: board\ndescription: x\npriority: 1\nmatch: {arch: [x86_64], colour: red}\nthreads: 0\n"
        "memory_budget_mb: 1\nruntimes: {asr: ['ctranslate2:cpu:int8:extra']}\ndefault_models: []\n"
    )
    with pytest.raises(ProfileError) as err:
        load_profiles(tmp_path)
    message = str(err.value)
    assert "board.yaml" in message and "match.colour" in message and "threads" in message
    assert "not runtime[:device[:precision]]" in message


def test_profile_name_must_match_file(tmp_path: Path) -> None:
    source = next(Path(__file__).parents[1].joinpath("hw").glob("generic-cpu.yaml")).read_text()
    (tmp_path / "other.yaml").write_text(source)
    with pytest.raises(ProfileError, match="differs from the file name"):
        load_profiles(tmp_path)
