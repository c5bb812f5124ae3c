"""The health gate of automatic boot assessment (`appliance firmware check`, run by appliance-healthy.service
before boot-complete.target): wait until appliance.service is active (it is Type=notify: active means READY=1)
and ``GET /health`` says ok with the supervisor ready and no service failed. Passing lets boot-complete.target
be reached, after which systemd-bless-boot blesses a slot on trial. Failing on trial marks the entry bad and
reboots, so the other slot boots; failing on a blessed slot only says so (there is nothing to fall back to).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

UNIT = "appliance.service"
BLESS_BOOT = Path("/usr/lib/systemd/systemd-bless-boot")
POLL_S = 2.0


class Unhealthy(Exception):
    """A verdict that waiting cannot change (a service the supervisor has given up on)."""


def unit_state(unit: str = UNIT) -> str:
    done = subprocess.run(["systemctl", "show", "-p", "ActiveState", "--value", unit], capture_output=True,
                          text=True, timeout=30)
    return done.stdout.strip() or "unknown"


def probe(port: int, timeout_s: float = 10.0) -> str | None:
    """None when /health is ok; else what is wrong (raised as ``Unhealthy`` when it is final)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"/health did not answer ({exc})"
    if body.get("status") != "ok":
        return f"/health says {body.get('status')!r}"
    supervisor = body.get("supervisor") or {}
    failed = sorted(name for name, state in (supervisor.get("services") or {}).items() if state == "failed")
    if failed:  # failed = its restarts used up: final until a reload
        raise Unhealthy(f"services failed: {', '.join(failed)}")
    if supervisor and not supervisor.get("ready"):
        return "the supervisor is not ready"
    return None


def wait_healthy(state: Callable[[], str], check: Callable[[], str | None], wait_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str | None:
    """None once the unit is active and healthy; else why not, as soon as the unit has failed or at the end."""
    deadline = clock() + wait_s
    why = "not checked"
    while True:
        current = state()
        if current == "failed":
            return f"{UNIT} failed (it could not start, or crashed more often than its restart limit allows)"
        if current == "active":
            try:
                why = check() or ""
            except Unhealthy as exc:
                return str(exc)
            if not why:
                return None
        else:
            why = f"{UNIT} is {current}"
        if clock() >= deadline:
            return f"not healthy after {wait_s:g} s: {why}"
        sleep(POLL_S)


def on_trial(tool: Path = BLESS_BOOT) -> bool:
    """Whether this boot is a slot being tried (systemd-bless-boot says 'indeterminate')."""
    if not tool.exists():
        return False
    done = subprocess.run([str(tool), "status"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() == "indeterminate"


def give_up(tool: Path = BLESS_BOOT) -> None:
    """Mark the booted entry bad and reboot: the firmware boots the other slot."""
    subprocess.run([str(tool), "bad"], check=True, timeout=60)
    subprocess.run(["systemctl", "reboot"], check=True, timeout=60)
