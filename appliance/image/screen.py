"""The device's own screen (boards with ``kiosk: true``, e.g. x86-kiosk): the kiosk page in Chromium under cage
on tty1, as the `kiosk` user, signed in with a one-time link; no desktop. Chromium's managed policy lets the
page (and nothing else) use the microphone without asking, and keeps the browser from calling home."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.image.steps import run

# polkitd: systemd 252's logind lets a session take its own VT (cage asks, through libseat) only by polkit;
# xwayland: cage 0.1.4 will not start without it
PACKAGES = ("cage", "xwayland", "chromium", "dbus", "libpam-systemd", "polkitd", "fonts-dejavu-core")
SCRIPTS = ("appliance-kiosk-link", "appliance-kiosk-screen")


def configure(root: Path, units: Path, log: Path) -> None:
    """Install the screen's unit, its user, its two scripts and Chromium's policy, and enable the unit (call
    after the appliance's own units: it runs ``systemd-sysusers`` again for the `kiosk` user)."""
    shutil.copyfile(units / "appliance-kiosk.service", root / "usr" / "lib" / "systemd" / "system" /
                    "appliance-kiosk.service")
    shutil.copyfile(units / "appliance-kiosk.sysusers", root / "usr" / "lib" / "sysusers.d" / "appliance-kiosk.conf")
    for script in SCRIPTS:
        target = root / "usr" / "local" / "sbin" / script
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(units / script, target)
        target.chmod(0o755)
    policy = root / "etc" / "chromium" / "policies" / "managed" / "appliance-kiosk.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(units / "chromium-kiosk-policy.json", policy)
    run("screen", ["systemd-sysusers", f"--root={root}"], log)
    run("screen", ["systemctl", f"--root={root}", "enable", "appliance-kiosk.service"], log)
