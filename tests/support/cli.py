"""The CLI as a user runs it: `python -m appliance …` in a subprocess, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

TIMEOUT = 300


def appliance(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
                          env=full_env, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc
