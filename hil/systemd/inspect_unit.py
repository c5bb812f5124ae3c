"""Boot the test guest of tests/test_systemd.py (Debian 12, systemd as PID 1, systemd-nspawn), start the
appliance unit as shipped (no drop-in), and print what systemd says about it: `systemctl status`, the unit's
journal with priorities, `systemd-analyze security` and `systemd-analyze verify`. Run as root from the checkout:

    .venv/bin/python hil/systemd/inspect_unit.py [--seconds 40]

The guest tree is the cached one of the test (debootstrapped on first use).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.systemd_guest import Bind, boot, ensure_rootfs  # noqa: E402
from tests.test_systemd import CONFIG, GUEST_VENV, UNIT, UNITS, guest_venv  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="How long the unit runs before the report.")
    args = parser.parse_args()
    rootfs = ensure_rootfs()
    with tempfile.TemporaryDirectory(prefix="appliance-unit-") as tmp:
        staging = Path(tmp)
        staging.chmod(0o755)
        (staging / "appliance.toml").write_text(CONFIG)
        binds = [Bind(UNITS / "appliance.service", f"/usr/lib/systemd/system/{UNIT}"),
                 Bind(UNITS / "appliance.sysusers", "/usr/lib/sysusers.d/appliance.conf"),
                 Bind(staging / "appliance.toml", "/etc/appliance/appliance.toml"),
                 Bind(guest_venv(staging), GUEST_VENV), Bind(ROOT)]
        with boot(rootfs, binds, staging / "console.log", f"appliance-inspect-{os.getpid()}") as guest:
            print(guest.run("systemctl", "start", UNIT, check=False, timeout_s=90).stderr)
            time.sleep(args.seconds)
            for command in (["systemctl", "status", "--no-pager", "-l", UNIT],
                            ["journalctl", "-u", UNIT, "--no-pager", "-o", "with-unit", "-p", "debug"],
                            ["journalctl", "-u", UNIT, "--no-pager", "-o", "cat", "-p", "warning"],
                            ["systemd-analyze", "security", "--no-pager", UNIT],
                            ["systemd-analyze", "verify", f"/usr/lib/systemd/system/{UNIT}"]):
                done = guest.run(*command, check=False)
                print(f"\n$ {' '.join(command)}  (exit {done.returncode})\n{done.stdout}{done.stderr}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
