"""The offline wheelhouse: every wheel a device installs, and a hash-pinned requirements file of exactly those.

From the device lock (requirements/device.txt) and the build lock (requirements/build.txt), pip downloads every
distribution meant for this platform, each checked against the lock's hashes; the few sdists (systemd-python,
pyaudio) and the appliance itself are built into wheels without build isolation (the build tools are locked
too). ``requirements.txt`` then names each wheel of the device set with the sha256 of that very file, and
``build.txt`` the build tools, so that an image build, or a machine that reaches no registry at all, installs
with ``pip install --no-index --find-links DIR --require-hashes -r DIR/requirements.txt``.

For another machine (a ``Target``: an arm64 image built on x86_64), pip downloads the wheels made for its
platform tags and Python, and the sdists it has no wheel for are built by the target's own tree under
emulation (the caller's ``build_sdists``). Distributions the target goes ``without`` (each with its reason)
are left out of the lock before anything is downloaded.

The wheelhouse is built beside its destination and renamed into place: a failed build leaves the old one.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import parse_wheel_filename

from appliance.errors import ApplianceError
from appliance.release.locks import normalize, read_lock

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2")


class WheelhouseError(ApplianceError):
    """The wheelhouse could not be built (a download or a build failed)."""


@dataclass(frozen=True)
class Target:
    """Another machine the wheels are for: its ``uname -m``, its Python (``3.11``), the newest glibc it has, and
    how its sdists are built (``build_sdists(sdists, wheel_dir)``, e.g. chrooted into its tree)."""

    machine: str
    python: str
    glibc: tuple[int, int]
    build_sdists: Callable[[list[Path], Path], None] = field(compare=False)

    def pip_args(self) -> list[str]:
        platforms = [f"manylinux_2_{minor}_{self.machine}" for minor in range(self.glibc[1], 16, -1)]
        platforms += [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]
        abi = "cp" + self.python.replace(".", "")
        return [*(arg for p in platforms for arg in ("--platform", p)), "--python-version", self.python,
                "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]


@dataclass(frozen=True)
class Wheelhouse:
    path: Path
    wheels: tuple[Path, ...]  # every wheel in it
    built: tuple[str, ...]  # distributions built here from an sdist (not downloadable as wheels)


def build(project: Path, out: Path, python: str = sys.executable, target: Target | None = None,
          without: Mapping[str, str] | None = None) -> Wheelhouse:
    """Build the wheelhouse of ``project`` (its pyproject.toml and requirements/) into ``out``: for this
    machine, or for ``target``; ``without`` names distributions to leave out (name: reason)."""
    device, tools = project / "requirements" / "device.txt", project / "requirements" / "build.txt"
    for lock in (device, tools):
        if not lock.is_file():
            raise WheelhouseError(f"{lock} is missing; fix: run from a checkout with its locks (make lock)")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    downloads, wheels = work / "downloads", work / "wheels"
    work.mkdir(parents=True)
    if without:
        device = _lock_without(device, {normalize(name) for name in without}, work / "device.txt")
    device_names, tool_names = _locked_names(device) | {"appliance"}, _locked_names(tools)
    _pip(python, "download", "--require-hashes", "--no-deps", "-d", str(downloads), *(target.pip_args() if target
         else []), "-r", str(tools), "-r", str(device))
    wheels.mkdir(parents=True)
    sdists = []
    for file in sorted(downloads.iterdir()):
        if file.name.endswith(".whl"):
            file.rename(wheels / file.name)
        elif file.name.endswith(SDIST_SUFFIXES):
            sdists.append(file)
    if target and sdists:
        target.build_sdists(sdists, wheels)
    for file in [] if target else sdists:
        _pip(python, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(file))
    _pip(python, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project))
    shutil.rmtree(downloads)
    for file in sorted(wheels.iterdir()):
        file.rename(work / file.name)
    wheels.rmdir()
    files = sorted(work.glob("*.whl"))
    _write_requirements(work / "requirements.txt", [f for f in files if _name(f) in device_names])
    _write_requirements(work / "build.txt", [f for f in files if _name(f) in tool_names])
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return Wheelhouse(out, tuple(out / f.name for f in files), tuple(f.name for f in sdists))


def _lock_without(lock: Path, names: set[str], out: Path) -> Path:
    """A copy of ``lock`` without the pins of ``names`` (an error if one is not in it: a stale board file)."""
    lines = lock.read_text().replace("\\\n", " ").splitlines()
    kept = [line for line in lines if not line.startswith("#") and _pin_name(line) not in names]
    missing = names - {_pin_name(line) for line in lines}
    if missing:
        raise WheelhouseError(f"{', '.join(sorted(missing))}: not in {lock.name}, nothing to go without")
    out.write_text("\n".join(kept) + "\n")
    return out


def _pin_name(line: str) -> str:
    return normalize(line.split("==", 1)[0].strip()) if "==" in line else ""


def _pip(python: str, *args: str) -> None:
    command = [python, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise WheelhouseError(f"pip {args[0]} failed: {detail[0]}")


def _locked_names(lock: Path) -> set[str]:
    return {pin.name for pin in read_lock(lock)}


def _name(wheel: Path) -> str:
    return normalize(parse_wheel_filename(wheel.name)[0])


def _write_requirements(path: Path, wheels: list[Path]) -> None:
    lines = ["# Generated by appliance.image.wheelhouse: every wheel of this folder with its own sha256."]
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m appliance.image.wheelhouse", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dist/wheelhouse"), help="destination folder")
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[2],
                        help="the checkout whose locks are used (default: this one)")
    args = parser.parse_args(argv)
    try:
        house = build(args.project.resolve(), args.out.resolve())
    except (WheelhouseError, OSError) as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 2
    size = sum(w.stat().st_size for w in house.wheels) / 2**20
    print(f"{house.path}: {len(house.wheels)} wheels, {size:.0f} MiB (built here: {', '.join(house.built) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
