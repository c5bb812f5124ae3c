"""What the global options give every sub-command: the settings and, lazily, the wired Device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: every start of the CLI (and every restart of the appliance) pays imports
    from appliance.config import Settings
    from appliance.device import Device


@dataclass
class CliState:
    config_path: Path | None
    _settings: Settings | None = field(default=None, repr=False)
    _device: Device | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from appliance.config import load_settings

            self._settings = load_settings(self.config_path)
            logging.basicConfig(level=self._settings.log.level.upper(), format="%(levelname)s %(name)s: %(message)s")
            # per-packet, per-request and per-signature INFO lines
            for chatty in ("aioice", "aiortc", "httpx", "httpx2", "httpcore", "tuf", "securesystemslib", "urllib3"):
                logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
        return self._settings

    @property
    def device(self) -> Device:
        if self._device is None:
            from appliance.device import Device

            self._device = Device.open(self.settings)
        return self._device
