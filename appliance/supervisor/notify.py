"""sd_notify: tell systemd (Type=notify) that we are ready, what we are doing, and that the loop is alive.

systemd-python's ``systemd.daemon.notify`` is used when it is importable; otherwise (the usual case: it needs
libsystemd-dev to build) the message is one datagram to ``$NOTIFY_SOCKET``, a filesystem path or, with a
leading '@', an abstract-namespace name. Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a
no-op that returns False. Sending never blocks: a full socket drops the message (the next one follows soon).

The watchdog interval comes from ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, which must be our pid when set);
pings go at half of it, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def _systemd_daemon() -> Any:
    """systemd.daemon when systemd-python is installed, else None (probed without importing a missing package)."""
    try:
        if importlib.util.find_spec("systemd") is None or importlib.util.find_spec("systemd.daemon") is None:
            return None
        import systemd.daemon

        return systemd.daemon
    except ImportError:
        return None


def socket_address(value: str) -> str | None:
    """The connectable AF_UNIX address of a $NOTIFY_SOCKET value: '@name' is abstract ('\\0name'); only
    absolute paths otherwise (vsock addresses are not supported)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """The notify socket of this process. ``environ`` is injectable for tests; with the real environment
    systemd-python is preferred when present."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._library = _systemd_daemon() if environ is None else None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one message; True if it went out."""
        value = self.environ.get("NOTIFY_SOCKET")
        if not value:
            return False
        message = "\n".join(fields)
        if self._library is not None:
            ok = bool(self._library.notify(message))
        else:
            ok = self._send_plain(value, message.encode())
        self.sent += ok
        return ok

    def _send_plain(self, value: str, data: bytes) -> bool:
        address = socket_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s is not a path or an abstract socket; not notifying systemd", value)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(data, address)
            return True
        except OSError as exc:  # receiver gone or its queue full: never worth blocking or crashing for
            log.debug("sd_notify to %s failed: %s", value, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, notify_reload: bool = False) -> bool:
        """RELOADING=1; with ``notify_reload`` (Type=notify-reload, systemd 253+) also MONOTONIC_USEC. Send
        ready() when the reload is done."""
        fields = ["RELOADING=1"]
        if notify_reload:
            fields.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        return self.send(*fields)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start-up or stop (EXTEND_TIMEOUT_USEC)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of $WATCHDOG_USEC), or None when the watchdog is off or meant for
        another process ($WATCHDOG_PID)."""
        usec = self.environ.get("WATCHDOG_USEC", "")
        pid = self.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6
