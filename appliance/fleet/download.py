"""Downloads of update targets: resumable (HTTP Range from what a previous attempt left in ``<name>.part``),
bounded by the length the signed metadata gives (a server sending more is cut off: the endless-data attack),
written to the store's staging directory (never memory), and checked with python-tuf's own length-and-hash
verification before anyone uses the file. A full disk is reported as such and its partial file removed."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from appliance.fleet.client import FleetError

CHUNK = 1 << 16


class DiskFull(FleetError):
    """The store's filesystem filled during a download."""


class Cancelled(FleetError):
    """The agent is stopping."""


@dataclass
class Transfer:
    path: Path
    received: int  # bytes on the wire in this attempt
    resumed_from: int


def fetch(client: httpx.Client, url: str, target: TargetFile, dest: Path,
          stop: threading.Event | None = None, progress: Callable[[int], None] | None = None) -> Transfer:
    """Download ``target`` from ``url`` into ``dest`` (via ``dest.part``) and verify it; resumes a partial."""
    if dest.exists():  # a previous attempt finished: keep it if it still verifies
        try:
            verify(target, dest)
            return Transfer(dest, 0, target.length)
        except FleetError:
            pass
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > target.length:
        part.unlink()
        have = 0
    received, start = 0, have
    if have < target.length:
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200:
                    have = 0  # the server ignored the range (or none was asked): from the start
                elif response.status_code != 206 or not have:
                    raise FleetError(f"download of {target.path} failed: HTTP {response.status_code}")
                start = have
                with part.open("r+b" if have else "wb") as fh:
                    fh.seek(have)
                    fh.truncate()
                    for chunk in response.iter_bytes(CHUNK):
                        if stop is not None and stop.is_set():
                            raise Cancelled("stopping")
                        if have + len(chunk) > target.length:
                            raise FleetError(f"download of {target.path}: the server sent more than the "
                                             f"{target.length} bytes the signed metadata allows; refused")
                        fh.write(chunk)
                        have += len(chunk)
                        received += len(chunk)
                        if progress:
                            progress(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                part.unlink(missing_ok=True)
                raise DiskFull(f"disk full while downloading {target.path} ({target.length} bytes) into "
                               f"{part.parent}; the partial file was removed") from None
            raise
        except httpx.HTTPError as exc:
            raise FleetError(f"download of {target.path} interrupted after {have} of {target.length} bytes "
                             f"({type(exc).__name__}); the next attempt resumes") from None
    if have < target.length:
        raise FleetError(f"download of {target.path} ended after {have} of {target.length} bytes; "
                         "the next attempt resumes")
    verify(target, part)
    os.replace(part, dest)
    return Transfer(dest, received, start)


def verify(target: TargetFile, path: Path) -> None:
    """python-tuf's check of a file against the signed length and hashes; a mismatch deletes the file."""
    with path.open("rb") as fh:
        try:
            target.verify_length_and_hashes(fh)
        except LengthOrHashMismatchError as exc:
            path.unlink(missing_ok=True)
            raise FleetError(f"{target.path} does not match its signed hash or length ({exc}); discarded") from None
