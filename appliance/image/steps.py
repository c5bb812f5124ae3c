"""The machinery of an image build's steps: each step's output cached under its inputs' hash, tools run with
their output kept in the build log, and commands run inside a tree (chroot with /proc and /sys of its own)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ApplianceError


class BuildError(ApplianceError):
    """An image step failed; the message names the step and the tool's last words."""


def key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def files_key(*roots: Path) -> str:
    """A hash of every file under ``roots`` (names and contents; caches and bytecode left out)."""
    digest = hashlib.sha256()
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(path.as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cached(cache: Path, name: str, step_key: str, make: Callable[[Path], None]) -> Path:
    """The step's output directory: reused when its key matches, else made beside and renamed in."""
    done = cache / f"{name}-{step_key}"
    if (done / ".complete").exists():
        return done
    work = cache / f".{name}-{step_key}.work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    make(work)
    (work / ".complete").touch()
    for stale in cache.glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work.rename(done)
    return done


def run(step: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=3600, env=env)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-8:]
        raise BuildError(f"step {step}: {args[0]} failed (exit {proc.returncode}): " + " | ".join(tail))


def in_tree(step: str, root: Path, command: str, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a shell command chrooted into ``root``, in a mount namespace of its own with /proc and /sys mounted
    (gone with the namespace: nothing is left mounted on the build host)."""
    plain = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C.UTF-8", "HOME": "/root",
             **(env or {})}
    exports = " ".join(f"{k}='{v}'" for k, v in plain.items())
    script = (f'mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
              f'exec chroot "$0" /usr/bin/env -i {exports} /bin/sh -ec "$1"')
    run(step, ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script, str(root), command],
        log)
