"""Where the appliance keeps its state (models, API keys, call records, status.json) unless a setting says
otherwise: one rule for every part, so that the systemd unit's StateDirectory= serves them all."""

from __future__ import annotations

import os
import sys
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


def shipped(relative: str) -> Path:
    """A file or folder the project ships beside the package (``hw``, ``models/catalog.yaml``): in a checkout,
    the repository's own; in an installed wheel, the copy its data-files put under ``share/appliance`` of the
    install prefix (found through the distribution's record, so a --user or --prefix install works too)."""
    checkout = Path(__file__).resolve().parents[2] / relative
    if checkout.exists():
        return checkout
    from importlib import metadata

    target = f"share/appliance/{relative}"
    try:
        files = metadata.distribution("appliance").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        posix = file.as_posix()
        at = posix.find(target)
        rest = posix[at + len(target):] if at >= 0 else None
        if rest == "" or (rest is not None and rest.startswith("/")):
            located = Path(str(file.locate())).resolve()
            depth = rest.count("/")
            return located.parents[depth - 1] if depth else located
    return Path(sys.prefix) / target
