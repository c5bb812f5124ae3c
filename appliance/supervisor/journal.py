"""Logging to the systemd journal with structured fields.

``journal_handler()`` gives systemd-python's JournalHandler when it is importable, else this module's
``NativeJournalHandler`` (journald's native protocol: one datagram of ``FIELD=value`` lines to
/run/systemd/journal/socket) when our stderr really is connected to the journal ($JOURNAL_STREAM), else None
(keep logging to stderr). Upper-case ``extra`` keys become fields: ``log.info("restarted", extra={"SERVICE":
"sip"})`` gives ``SERVICE=sip``, so ``journalctl -u appliance SERVICE=sip`` shows one service's lines.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*\Z")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """syslog priority of a logging level (journald's PRIORITY field)."""
    for level, value in _PRIORITY.items():
        if levelno >= level:
            return value
    return 7


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """journald's native wire format: ``NAME=value\\n``, or for values with a newline ``NAME\\n``, a 64-bit
    little-endian length, the value and ``\\n``."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class NativeJournalHandler(logging.Handler):
    """Sends each record as one datagram with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, LOGGER, CODE_* and the
    record's upper-case extras. A record the journal refuses goes to stderr instead of being lost."""

    def __init__(self, identifier: str = "appliance", path: Path = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        fields = {"MESSAGE": self.format(record), "PRIORITY": str(priority(record.levelno)),
                  "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name, "CODE_FILE": record.pathname,
                  "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName or "",
                  "THREAD_NAME": record.threadName or ""}
        for key, value in record.__dict__.items():
            if _FIELD.match(key) and key not in fields:
                fields[key] = str(value)
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sock.sendto(encode_fields(self.fields(record)), str(self.path))
        except OSError:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when fd 2 is the stream systemd connected to the journal ($JOURNAL_STREAM = device:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def journal_handler(identifier: str = "appliance") -> logging.Handler | None:
    """The best journal handler available here, or None when stderr is not the journal."""
    if not stderr_is_journal():
        return None
    if importlib.util.find_spec("systemd") is not None:
        try:
            from systemd.journal import JournalHandler

            handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
            return handler
        except ImportError:
            pass
    if JOURNAL_SOCKET.exists():
        return NativeJournalHandler(identifier)
    return None
