"""Where the appliance keeps its state (models, API keys, call records, status.json) unless a setting says
otherwise: one rule for every part, so that the systemd unit's StateDirectory= serves them all."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """systemd's $STATE_DIRECTORY (its first entry) when the unit sets one; /var/lib/appliance as root; else
    $XDG_DATA_HOME/appliance (~/.local/share/appliance)."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/appliance")
    import platformdirs

    return Path(platformdirs.user_data_dir("appliance"))
