"""A real PostgreSQL server for the console's tests and benchmark (Debian's `postgresql`, which `make test`
installs): a cluster made with initdb in a temporary directory, listening only on a Unix socket there (no TCP
port), run as the `postgres` user when running as root (PostgreSQL refuses root), stopped at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.bench.procs import stop
from appliance.errors import ApplianceError

BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) \
    if Path("/usr/lib/postgresql").exists() else None


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server(work: Path, database: str = "console") -> Iterator[str]:
    """A running server with an empty ``database``; its SQLAlchemy URL (psycopg, over the Unix socket)."""
    if BIN is None:
        raise ApplianceError("PostgreSQL is not installed here (Debian postgresql; make test installs it)")
    work.mkdir(parents=True, exist_ok=True)
    data, sock = work / "data", work / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(sock, "postgres")
        work.chmod(0o755)
        for parent in work.parents:  # the server's user must reach its directories
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                 "--no-sync", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
    server = subprocess.Popen(_as_postgres([str(BIN / "postgres"), "-D", str(data), "-k", str(sock), "-c",
                                            "listen_addresses=", "-c", "fsync=off"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            ready = subprocess.run([str(BIN / "pg_isready"), "-h", str(sock), "-U", "postgres"], capture_output=True)
            if ready.returncode == 0:
                break
            if server.poll() is not None:
                raise ApplianceError(f"postgres exited: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        subprocess.run([str(BIN / "createdb"), "-h", str(sock), "-U", "postgres", database], check=True,
                       capture_output=True, timeout=60)
        yield f"postgresql+psycopg://postgres@/{database}?host={sock}"
    finally:
        stop(server)
