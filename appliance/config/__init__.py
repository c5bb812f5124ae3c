"""Typed settings: one tree, read from a TOML file and APPLIANCE_* environment variables."""

from appliance.config.loader import DEFAULT_CONFIG_PATH, ConfigError, load_settings, render_settings
from appliance.config.settings import Settings

__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "Settings", "load_settings", "render_settings"]
