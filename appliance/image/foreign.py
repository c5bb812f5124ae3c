"""Wheels for a board of another architecture (an arm64 image built on x86_64): the wheelhouse's ``Target``
for the board's tree. Wheels come from the index for the tree's platform tags and Python; the few sdists with
no wheel for it (systemd-python, pyaudio) are compiled by the board's own toolchain, chrooted into a
throw-away copy of its tree under binfmt emulation, with the locked build tools. The copy is deleted; the
image's tree never gets a compiler."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.image.boards import MACHINE, Board
from appliance.image.steps import BuildError, in_tree, run
from appliance.image.wheelhouse import Target

# what the sdists of the device lock need to compile (headers of the libraries they bind)
BUILD_PACKAGES = ("python3-dev", "python3-venv", "build-essential", "pkg-config", "libsystemd-dev",
                  "portaudio19-dev")


def target(board: Board, tree: Path, work: Path, log: Path) -> Target:
    """The wheelhouse target of ``board`` whose Debian tree is ``tree``; scratch space under ``work``."""
    return Target(MACHINE[board.arch], tree_python(tree), tree_glibc(tree),
                  lambda sdists, wheels: _build_sdists(tree, sdists, wheels, work / "builder", log))


def tree_python(tree: Path) -> str:
    found = sorted((tree / "usr" / "bin").glob("python3.*[0-9]"))
    if not found:
        raise BuildError(f"the tree {tree} has no python3.X (is python3 in its packages?)")
    return found[-1].name.removeprefix("python")


def tree_glibc(tree: Path) -> tuple[int, int]:
    """The tree's glibc version, from its loader's name in the libc6 package list (libc.so.6 has no version)."""
    for status in (tree / "var" / "lib" / "dpkg" / "status").read_text().split("\n\n"):
        if status.startswith("Package: libc6\n"):
            version = next(line.split()[1] for line in status.splitlines() if line.startswith("Version:"))
            major, minor = version.split("-")[0].split(".")[:2]
            return int(major), int(minor)
    raise BuildError(f"the tree {tree} has no libc6 package")


def _build_sdists(tree: Path, sdists: list[Path], wheels: Path, builder: Path, log: Path) -> None:
    shutil.rmtree(builder, ignore_errors=True)
    run("wheels", ["cp", "-a", "--reflink=auto", str(tree), str(builder)], log)
    try:
        inbox = builder / "tmp" / "sdists"
        inbox.mkdir()
        for file in [*sdists, *wheels.glob("setuptools-*.whl"), *wheels.glob("wheel-*.whl")]:
            shutil.copyfile(file, inbox / file.name)
        (builder / "etc" / "resolv.conf").unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", builder / "etc" / "resolv.conf")  # apt reaches the Debian mirror
        pip = "/tmp/build-venv/bin/pip --disable-pip-version-check -q"
        in_tree("wheels", builder, " && ".join([
            "apt-get update -q",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {' '.join(BUILD_PACKAGES)}",
            "python3 -m venv /tmp/build-venv",
            f"{pip} install --no-index --no-deps /tmp/sdists/setuptools-*.whl /tmp/sdists/wheel-*.whl",
            *(f"{pip} wheel --no-index --no-deps --no-build-isolation -w /tmp/built /tmp/sdists/{s.name}"
              for s in sdists)]), log)
        built = sorted((builder / "tmp" / "built").glob("*.whl"))
        if len(built) != len(sdists):
            raise BuildError(f"step wheels: {len(sdists)} sdists gave {len(built)} wheels in the board's tree")
        for wheel in built:
            shutil.copyfile(wheel, wheels / wheel.name)
    finally:
        shutil.rmtree(builder, ignore_errors=True)
