"""The process's lifecycle around a Supervisor: signals in, exit code out.

SIGTERM/SIGINT drain and stop (a second one skips the rest of the drain), SIGHUP reloads the configuration;
the exit code is 0 after a stop and 1 when every service failed, so that systemd's Restart=on-failure starts
the appliance afresh.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from appliance.supervisor.supervisor import Supervisor

log = logging.getLogger(__name__)


async def serve(supervisor: Supervisor, load_settings: Callable[[], Any]) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until every service failed (exit 1); SIGHUP reloads through
    ``load_settings`` (called in a thread; an invalid file is logged and the running configuration kept)."""
    loop = asyncio.get_running_loop()
    stop, hup = supervisor.stop_requested, asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    code = 0
    try:
        await supervisor.start()
        while True:
            waits = [asyncio.ensure_future(e.wait()) for e in (stop, hup, supervisor.all_failed)]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if stop.is_set():
                break
            if supervisor.all_failed.is_set():
                log.error("every service failed: exiting so that systemd can restart the appliance")
                code = 1
                break
            hup.clear()
            try:
                settings = await asyncio.to_thread(load_settings)
            except Exception as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
                continue
            await supervisor.reload(settings)
    finally:
        await supervisor.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return code
