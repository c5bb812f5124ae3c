"""Hash lock files (pip's ``name==version --hash=sha256:…`` format, as ``uv pip compile`` writes them), read-only.

A universal lock may pin one name several times under different markers (numpy for Python < 3.12 and ≥ 3.12);
every pin is kept, and a caller matches a pin by the version it found installed, so no marker is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

REPOSITORY = Path(__file__).resolve().parents[2]
# the device's lock, the full one (dev tools too), the build tools (pip, setuptools, wheel) the venv starts with
DEFAULT_LOCKS = ("requirements/device.txt", "requirements/lock.txt", "requirements/build.txt")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*([^\s;\\]+)")
_HASH = re.compile(r"--hash[= ]sha256:([0-9a-fA-F]{64})")


class LockError(ApplianceError):
    """A lock file cannot be read or pins nothing."""


@dataclass(frozen=True)
class Pin:
    name: str  # normalized (PEP 503)
    version: str
    sha256: tuple[str, ...]  # every locked distribution file of this version (sdist and wheels)
    lock: str  # which lock: its path relative to the repository, else as given


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def repository_locks() -> list[Path]:
    """The project's locks when the appliance runs from its repository (a checkout); none when installed."""
    if not (REPOSITORY / "pyproject.toml").is_file():
        return []
    return [REPOSITORY / name for name in DEFAULT_LOCKS if (REPOSITORY / name).is_file()]


def read_lock(path: Path) -> list[Pin]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LockError(f"lock file {path}: {reason}") from None
    label = _label(path)
    pins = []
    for line in text.replace("\\\n", " ").splitlines():
        match = _PIN.match(line.strip())
        if match:
            hashes = tuple(h.lower() for h in _HASH.findall(line))
            pins.append(Pin(normalize(match[1]), match[2], hashes, label))
    if not pins:
        raise LockError(f"lock file {path}: no `name==version` pins in it; is it a requirements lock?")
    return pins


def read_locks(paths: Iterable[Path]) -> dict[str, list[Pin]]:
    """Every pin of every lock, by normalized name, in the order the locks were given."""
    index: dict[str, list[Pin]] = {}
    for path in paths:
        for pin in read_lock(path):
            index.setdefault(pin.name, []).append(pin)
    return index


def _label(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPOSITORY).as_posix()
    except ValueError:
        return str(path)
