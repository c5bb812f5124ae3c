"""Writing a file so that readers see the old one or the whole new one, never a part: beside the target, flushed
to disk, renamed over it. Every state file of the appliance (keys, status, the update agent's journal, the
repository's metadata, the SBOM) is written this way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int | None = None, parents: bool = False) -> None:
    """Replace ``path`` with ``data``; ``mode`` (e.g. 0o600) is set before the rename, so the file is never
    readable by others even for an instant; ``parents`` makes missing folders (a state directory), otherwise a
    missing folder is an error. Raises OSError (ENOSPC, EACCES…) with nothing left behind. Run as root (a
    technician's `appliance keys create` on a device), the file keeps its owner, or a new one takes its folder's:
    a root-owned 0600 key file in the service's state directory would lock the service out of it."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if os.geteuid() == 0:
            owner = os.stat(path if path.exists() else path.parent)
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for an instant, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
