"""Listening sockets handed to a child as systemd's socket activation hands them (sd_listen_fds(3)): from fd 3 in
the order given, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (the child's own pid, set by ``sh`` before it
execs the command). For `appliance bench supervisor` and the tests, which restart `appliance run` as systemd with
images/systemd/appliance.socket would: the ports stay open across the restart."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FIRST_FD = 3
HIGH_FD = 512  # where the sources are moved first, so that no source is overwritten by another's target


def listening(kind: int, host: str, port: int) -> socket.socket:
    """A socket bound to host:port, listening when it is TCP (what a ListenStream=/ListenDatagram= line makes)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(socket.SOMAXCONN)
    return sock


@dataclass(frozen=True)
class Passing:
    """What to spawn the child with (subprocess or asyncio.create_subprocess_exec): ``argv`` (the command under
    ``sh``), ``env`` and ``preexec_fn``, with close_fds=False: the placed fds are the only inheritable ones (Python
    opens everything else close-on-exec)."""

    argv: list[str]
    env: dict[str, str]
    preexec_fn: Callable[[], None]
    close_fds: bool = False


def passing(sockets: Sequence[socket.socket], argv: Sequence[str], env: dict[str, str],
            name: str = "appliance.socket") -> Passing:
    sources = [s.fileno() for s in sockets]
    targets = list(range(FIRST_FD, FIRST_FD + len(sources)))

    def place() -> None:  # in the child, between fork and exec: only async-signal-safe calls
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, HIGH_FD) for fd in sources]
        for fd, target in zip(high, targets, strict=True):
            os.dup2(fd, target)  # inheritable
            os.close(fd)

    env = {**env, "LISTEN_FDS": str(len(sources)), "LISTEN_FDNAMES": ":".join([name] * len(sources))}
    return Passing(["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh", *argv], env, place)
