"""The README stays true: every configuration key and every CLI command is documented in it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from appliance.cli.main import app
from appliance.config.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += keys(kind, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_config_key_is_documented() -> None:
    missing = [key for key in keys(Settings) if f"`{key}`" not in README]
    assert not missing, f"configuration keys missing from README.md: {missing}"


def test_every_command_is_documented() -> None:
    commands = [f"appliance {c.name or c.callback.__name__}" for c in app.registered_commands if c.callback]
    for group in app.registered_groups:
        sub = group.typer_instance
        assert sub is not None
        commands += [f"appliance {group.name} {c.name or c.callback.__name__}" for c in sub.registered_commands
                     if c.callback]
    # a group's later commands may be written short in the same cell: `appliance keys create …` / `keys list`
    missing = [c for c in commands if f"`{c}" not in README and f"`{c.removeprefix('appliance ')}" not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_every_debian_package_of_the_makefile_has_a_tested_version() -> None:
    root = Path(__file__).parent.parent
    makefile = (root / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in makefile.splitlines() if x.startswith("SYSTEM_PACKAGES :="))
    wanted = set(line.split(":=", 1)[1].split())
    recorded = dict(x.split("=", 1) for x in (root / "requirements/debian-bookworm.txt").read_text().split())
    assert wanted == set(recorded), f"make debian-versions: {sorted(wanted ^ set(recorded))}"
