"""Settings: file, environment, precedence, and errors that name the key, the reason and the source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config import ConfigError, load_settings, render_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APPLIANCE_CONFIG", str(write(tmp_path, "")))
    settings = load_settings()
    assert settings.runtime.compare_candidates is False
    assert settings.hw.root == Path("/")
    assert settings.upstream.base_url is None


def test_file_then_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, '[runtime]\nthreads = 3\n[models]\nstore = "/srv/models"\n')
    monkeypatch.setenv("APPLIANCE_RUNTIME__THREADS", "5")
    settings = load_settings(path)
    assert settings.runtime.threads == 5
    assert settings.models.store == Path("/srv/models")


def test_unknown_key_names_path_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[models]\nstor = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "models.stor: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_names_path_reason_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[runtime]\nthreads = 0\n[log]\nlevel = 'loud'\n"))
    message = str(err.value)
    assert "2 problems" in message
    assert "runtime.threads: Input should be greater than 0 (got 0)" in message
    assert "log.level" in message and "'loud'" in message


def test_bad_environment_value_names_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APPLIANCE_RUNTIME__THREADS", "many")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, ""))
    assert "runtime.threads" in str(err.value)
    assert "environment APPLIANCE_RUNTIME__THREADS" in str(err.value)


def test_misspelt_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APPLIANCE_RUNTIME__THREDS", "2")
    with pytest.raises(ConfigError, match="APPLIANCE_RUNTIME__THREDS"):
        load_settings(write(tmp_path, ""))


def test_explicit_missing_file_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[runtime\nthreads = 2"))


def test_secret_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "sk-very-secret"\n')
    shown = render_settings(load_settings(path))
    assert "sk-very-secret" not in shown
    assert 'api_key = "********"' in shown
    assert 'base_url = "http://127.0.0.1:9/v1"' in shown
    monkeypatch.setenv("APPLIANCE_UPSTREAM__TIMEOUT_S", "-1")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "sk-very-secret" not in str(err.value)


def test_call_records_limit_has_its_own_name_and_the_old_one_still_reads(tmp_path: Path) -> None:
    """`bot.max_records` (records kept) is not `sip.max_calls` (calls at once); files written with the old
    `bot.max_calls` keep working."""
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text("[bot]\nmax_calls = 50\n[sip]\nmax_calls = 3\n")
    new.write_text("[bot]\nmax_records = 60\n")
    settings = load_settings(old)
    assert settings.bot.max_records == 50 and settings.sip.max_calls == 3
    assert load_settings(new).bot.max_records == 60
    assert "max_records = 50" in render_settings(settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_file_written_as_root_keeps_its_owner_or_takes_its_folders(tmp_path: Path) -> None:
    """`appliance keys create` run by a technician as root must not leave the service's 0600 key file
    root-owned (the service could no longer read its keys)."""
    from appliance.config.files import write_atomic

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4243)
    write_atomic(state / "keys.json", "{}", 0o600)
    made = (state / "keys.json").stat()
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (4242, 4243, 0o600)
    os.chown(state / "keys.json", 5151, 5152)
    write_atomic(state / "keys.json", '{"a": 1}', 0o600)
    kept = (state / "keys.json").stat()
    assert (kept.st_uid, kept.st_gid) == (5151, 5152) and (state / "keys.json").read_text() == '{"a": 1}'
