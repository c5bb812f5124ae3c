"""Socket activation: the listening sockets systemd passes (sd_listen_fds(3)), found by the address they are bound to.

With images/systemd/appliance.socket, systemd owns the ports (API, SIP over UDP and TCP) and hands them to each
`appliance run` as fds 3, 4, … (LISTEN_FDS, for LISTEN_PID). They stay open while the appliance is killed and
started again, so a connection or datagram that arrives in between waits in the kernel instead of being refused.

A service asks for the socket of its configured address (`stream`, `datagram`); it gets a duplicate, which its
server may close on a restart of the service while the original stays open for the next. The environment is read
once and cleared, so children do not take the sockets for theirs. A configured address that systemd did not pass
is bound by the service itself, as without systemd; a passed socket that no service took is in `unused()`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)
FIRST_FD = 3  # SD_LISTEN_FDS_START
ANY = {"": "0.0.0.0", "0.0.0.0": "0.0.0.0", "::": "::", "[::]": "::"}  # a wildcard, as getsockname() gives it


class ActivationError(ApplianceError):
    """The environment names sockets that are not there (a broken unit or wrapper)."""


@dataclass
class Passed:
    sock: socket.socket
    name: str  # FileDescriptorName= (systemd names them after the socket unit by default)
    taken: bool = False

    def describe(self) -> str:
        host, port = self.sock.getsockname()[:2]
        kind = "tcp" if self.sock.type == socket.SOCK_STREAM else "udp"
        return f"{'[' + host + ']' if ':' in host else host}:{port}/{kind}"


@dataclass
class Activation:
    """The passed sockets of this process (none when systemd passed none)."""

    passed: list[Passed] = field(default_factory=list)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> Activation:
        """sd_listen_fds(unset_environment=1): LISTEN_FDS sockets from fd 3 when LISTEN_PID is this process."""
        env = os.environ if environ is None else environ
        count, owner, names = env.pop("LISTEN_FDS", ""), env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDNAMES", "")
        if not count:
            return cls()
        if not owner.isdigit() or int(owner) != (pid or os.getpid()):
            log.warning("LISTEN_FDS names sockets for process %s, not this one: ignored", owner or "(unset)")
            return cls()
        if not count.isdigit():
            raise ActivationError(f"LISTEN_FDS={count!r} is not a number of sockets")
        labels = names.split(":") if names else []
        passed = []
        for nth in range(int(count)):
            fd = FIRST_FD + nth
            try:
                os.set_inheritable(fd, False)  # ours: children never see them
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                raise ActivationError(f"LISTEN_FDS={count}: fd {fd} is not a socket ({exc})") from None
            passed.append(Passed(sock, labels[nth] if nth < len(labels) else "unknown"))
        return cls(passed)

    def stream(self, host: str, port: int) -> socket.socket | None:
        """A duplicate of the listening TCP socket bound to host:port, if systemd passed one."""
        return self._take(socket.SOCK_STREAM, host, port)

    def datagram(self, host: str, port: int) -> socket.socket | None:
        """A duplicate of the UDP socket bound to host:port, if systemd passed one."""
        return self._take(socket.SOCK_DGRAM, host, port)

    def _take(self, kind: int, host: str, port: int) -> socket.socket | None:
        for p in self.passed:
            if p.sock.type == kind and p.sock.family in (socket.AF_INET, socket.AF_INET6) and _serves(p.sock,
                                                                                                      host, port):
                p.taken = True
                return p.sock.dup()
        return None

    def unused(self) -> list[str]:
        """The passed sockets that no service took: the socket unit and the settings disagree."""
        return [f"{p.describe()} ({p.name})" for p in self.passed if not p.taken]


def _serves(sock: socket.socket, host: str, port: int) -> bool:
    """Is ``sock`` bound exactly where a service configured for host:port would bind? Port 0 never matches. So
    0.0.0.0 is not [::] (systemd's plain ListenStream=8080): the services would see IPv4 callers as IPv6-mapped
    addresses, which the SIP and Wyoming allow-lists do not match; appliance.socket names 0.0.0.0."""
    bound_host, bound_port = sock.getsockname()[:2]
    if port == 0 or bound_port != port:
        return False
    return bool(bound_host == ANY.get(host, host.strip("[]")))
