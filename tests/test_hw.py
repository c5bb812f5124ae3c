"""Hardware probe on fixture trees of real boards, and the profile each one must get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.hw import HardwareReport, load_profiles, match_profile, probe
from appliance.hw.profiles import ProfileError
from tests.conftest import HW_FIXTURES

EXPECTED = {
    "generic-x86_64": "generic-x86_64",
    "intel-core-ultra": "intel-core-ultra",
    "nvidia-jetson-orin": "nvidia-jetson-orin",
    "raspberry-pi-5": "raspberry-pi-5",
    "rockchip-rk3588": "rockchip-rk3588",
    "riscv64": "riscv64",
    "riscv64-spacemit-k1": "riscv64",
    "apple-silicon": "apple-silicon",
    "qualcomm": "qualcomm",
    "x86-kiosk": "x86-kiosk",
    "hailo-x86": "generic-x86_64",
    "edgetpu-x86": "generic-x86_64",
}


def test_every_fixture_tree_is_covered() -> None:
    trees = {p.name for p in HW_FIXTURES.iterdir() if p.is_dir()}
    assert trees == set(EXPECTED)


@pytest.mark.parametrize(("tree", "profile"), sorted(EXPECTED.items()))
def test_fixture_matches_its_profile(tree: str, profile: str) -> None:
    report = probe(HW_FIXTURES / tree)
    match = match_profile(report, load_profiles())
    assert match.profile.name == profile, match.rejected
    assert match.reasons
    # The report is JSON-serialisable and round-trips.
    assert HardwareReport.model_validate(json.loads(report.model_dump_json())) == report


@pytest.mark.parametrize(
    ("tree", "arch", "kinds"),
    [
        ("generic-x86_64", "x86_64", set()),
        ("intel-core-ultra", "x86_64", {"intel-npu", "intel-gpu"}),
        ("x86-kiosk", "x86_64", {"intel-gpu"}),
        ("nvidia-jetson-orin", "aarch64", {"nvidia-gpu"}),
        ("raspberry-pi-5", "aarch64", {"gpu"}),
        ("rockchip-rk3588", "aarch64", {"rockchip-npu", "gpu"}),
        ("qualcomm", "aarch64", {"qualcomm-hexagon", "gpu"}),
        ("riscv64", "riscv64", set()),
        ("apple-silicon", "arm64", {"apple-ane", "gpu"}),
        ("hailo-x86", "x86_64", {"hailo"}),
        ("edgetpu-x86", "x86_64", {"edgetpu"}),
    ],
)
def test_accelerators(tree: str, arch: str, kinds: set[str]) -> None:
    report = probe(HW_FIXTURES / tree)
    assert report.cpu.arch == arch
    assert {a.kind for a in report.accelerators} == kinds
    for acc in report.accelerators:
        assert acc.evidence


def test_isa_features() -> None:
    assert {"avx2", "avx512f"} <= set(probe(HW_FIXTURES / "generic-x86_64").cpu.flags)
    kiosk = probe(HW_FIXTURES / "x86-kiosk").cpu
    assert "avx2" in kiosk.flags and "avx512f" not in kiosk.flags
    assert "neon" in probe(HW_FIXTURES / "raspberry-pi-5").cpu.flags
    assert "rvv" in probe(HW_FIXTURES / "riscv64-spacemit-k1").cpu.flags
    assert "rvv" not in probe(HW_FIXTURES / "riscv64").cpu.flags


def test_board_identity() -> None:
    rock = probe(HW_FIXTURES / "rockchip-rk3588")
    assert "rockchip,rk3588" in rock.board.compatible
    assert rock.cpu.model_name == "4x Cortex-A55 + 4x Cortex-A76"
    assert rock.cpu.cores == 8
    pi = probe(HW_FIXTURES / "raspberry-pi-5")
    assert pi.board.model is not None and pi.board.model.startswith("Raspberry Pi 5")
    npu = next(a for a in probe(HW_FIXTURES / "intel-core-ultra").accelerators if a.kind == "intel-npu")
    assert npu.driver == "intel_vpu" and "Meteor Lake" in npu.name
    assert probe(HW_FIXTURES / "x86-kiosk").memory.total_mb < 16384


def test_this_machine_is_generic_x86_64() -> None:
    report = probe()
    assert report.system == "Linux"
    assert report.cpu.cores >= 1 and report.memory.total_mb > 0
    if report.cpu.arch == "x86_64" and not report.accelerators:
        assert match_profile(report, load_profiles()).profile.name == "generic-x86_64"


def test_empty_root_falls_back_to_catch_all(tmp_path: Path) -> None:
    report = probe(tmp_path)
    assert report.cpu.cores == 0 and report.accelerators == []
    assert match_profile(report, load_profiles()).profile.name == "generic-cpu"


def test_forced_profile_and_unknown_name() -> None:
    report = probe(HW_FIXTURES / "generic-x86_64")
    forced = match_profile(report, load_profiles(), forced="raspberry-pi-5")
    assert forced.profile.name == "raspberry-pi-5" and "forced" in forced.reasons[0]
    with pytest.raises(ProfileError, match="not a profile; known: .*generic-x86_64"):
        match_profile(report, load_profiles(), forced="pi-6")


def test_losers_say_why() -> None:
    match = match_profile(probe(HW_FIXTURES / "raspberry-pi-5"), load_profiles())
    assert match.rejected["intel-core-ultra"] == "arch aarch64 not in ['x86_64']"
    assert match.rejected["generic-aarch64"].startswith("also matches, but priority")
