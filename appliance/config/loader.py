"""Read the TOML file, merge the environment, and turn validation failures into readable errors."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import SecretStr, ValidationError

from appliance.config.settings import Settings
from appliance.errors import ApplianceError

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
MASK = "********"
ENV_PREFIX = "APPLIANCE_"


class ConfigError(ApplianceError):
    """A configuration problem, already phrased for the person who has to fix it."""


def load_settings(path: Path | None = None) -> Settings:
    """Load settings from ``path`` (or the default file if it exists) and the environment.

    An explicitly named file that does not exist is an error; a missing default file is not, and
    neither is an unknown APPLIANCE_* variable less: a typo there is reported like one in the file.
    """
    environ = os.environ
    explicit = path is not None or "APPLIANCE_CONFIG" in environ
    if path is None:
        path = Path(environ.get("APPLIANCE_CONFIG", str(DEFAULT_CONFIG_PATH)))
    data: dict[str, Any] = {}
    if path.exists():
        data = read_toml(path)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    bundle = fleet_bundle_path(data)
    if bundle.exists():  # the fleet's configuration layer: over the local file, under the environment
        data = merge(data, {k: v for k, v in read_toml(bundle).items() if k != "fleet"})
    unknown = [name for name in environ if name.startswith(ENV_PREFIX) and not _known_env(name)]
    if unknown:
        raise ConfigError(
            "unknown configuration variable" + ("s " if len(unknown) > 1 else " ") + ", ".join(sorted(unknown))
            + f" (keys are {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}MODELS__STORE)"
        )
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path if data else None, environ)) from None


def fleet_bundle_path(data: Mapping[str, Any]) -> Path:
    """Where the update agent keeps the configuration bundle it applied: ``fleet.state_dir``/config.toml."""
    from appliance.config.paths import data_root

    state = os.environ.get("APPLIANCE_FLEET__STATE_DIR") or (data.get("fleet") or {}).get("state_dir")
    return (Path(state) if state else data_root() / "fleet") / "config.toml"


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, table by table."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def validate_toml(path: Path) -> Settings:
    """The settings a TOML file alone describes (no environment, no default file): how a configuration bundle
    is checked before it is published and again before a device applies it."""
    data = read_toml(path)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, {})) from None


def _known_env(name: str) -> bool:
    if name == ENV_PREFIX + "CONFIG" or name.startswith(ENV_PREFIX + "KEY_PASSPHRASE"):  # release keys' passphrases
        return True
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    model: Any = Settings
    for part in parts:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return True


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _describe(exc: ValidationError, path: Path | None, environ: Mapping[str, str]) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        env_name = "APPLIANCE_" + "__".join(str(p) for p in err["loc"]).upper()
        source = f"environment {env_name}" if env_name in environ else (str(path) if path else "defaults")
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        value = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err['input']!r})"
        if "api_key" in loc or "password" in loc or "secret" in loc:
            value = ""
        lines.append(f"  {loc}: {reason}{value} [from {source}]")
    return "\n".join(lines)


def render_settings(settings: Settings) -> str:
    """The effective configuration as TOML, with every secret masked."""
    return tomli_w.dumps(_plain(settings.model_dump()))


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, Path):
        return str(value)
    return value
