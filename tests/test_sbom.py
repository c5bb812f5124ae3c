"""`appliance sbom` as a user runs it (a subprocess): every catalog model and every locked, installed package is in
the CycloneDX document with its sha256, the document passes the schema, and a bad --lock is one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

import appliance
from appliance.models import Catalog, ModelStore

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
VAD = "silero-vad-v6"
FAKE_TFLITE = b"stands in for the converter's output"


def sbom(*args: str, store: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") and k != "COLUMNS"}
    env.update(APPLIANCE_CONFIG=str(config), APPLIANCE_MODELS__STORE=str(store))  # 80 columns: no wrapped error
    proc = subprocess.run([sys.executable, "-m", "appliance", "sbom", *args], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def locked_pins(path: Path) -> list[tuple[str, str, set[str]]]:
    """(normalized name, version, sha256 set) of each pin, read without the code under test."""
    pins = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            pins.append((re.sub(r"[-_.]+", "-", match[1]).lower(), match[2].rstrip(";"),
                         set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))))
    return pins


def installed(pins: list[tuple[str, str, set[str]]]) -> list[tuple[str, str, set[str]]]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return [(name, ver, hashes) for name, ver, hashes in pins if version(name) == ver]


def props(component: dict[str, Any], name: str) -> list[str]:
    return [p["value"] for p in component.get("properties", []) if p["name"] == name]


def sha256s(component: dict[str, Any]) -> set[str]:
    return {h["content"] for h in component.get("hashes", []) if h["alg"] == "SHA-256"}


@pytest.fixture(scope="module")
def env_paths(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> tuple[Path, Path]:
    """A store holding one model (really pulled) with its derived variant recorded, and an empty config file."""
    root = tmp_path_factory.mktemp("sbom-store")
    store = ModelStore(root)
    entry = catalog.get(VAD)
    store.pull(entry)
    store.put_derived("tflite", entry.sha256_of("onnx/model.onnx"),
                      lambda d: (d / "model.tflite").write_bytes(FAKE_TFLITE))
    config = tmp_path_factory.mktemp("sbom-config") / "appliance.toml"
    config.touch()
    return root, config


@pytest.fixture(scope="module")
def document(env_paths: tuple[Path, Path]) -> str:
    proc = sbom(store=env_paths[0], config=env_paths[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_catalog_model_is_listed_with_every_files_sha256(document: str, catalog: Catalog) -> None:
    bom = json.loads(document)
    models = {c["name"]: c for c in bom["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {m.id for m in catalog.models}
    for entry in catalog.models:
        component = models[entry.id]
        assert component["version"] == entry.digest()
        assert component["description"] == entry.description
        licence = component["licenses"][0]["license"]
        assert entry.licence in (licence.get("id"), licence.get("name"))
        files = {f["name"]: sha256s(f) for f in component["components"]}
        for variant, variant_files in entry.variants.items():
            for f in variant_files:
                assert files[f"{variant}/{f.name}"] == {f.sha256}, (entry.id, f.name)
        assert len(props(component, "appliance:model:derived")) == len(entry.derived)
        assert props(component, "appliance:model:store") == (["active"] if entry.id == VAD else [])
    built = next(f for f in models[VAD]["components"] if f["name"] == "tflite/model.tflite")
    assert sha256s(built) == {hashlib.sha256(FAKE_TFLITE).hexdigest()}
    assert props(built, "appliance:model:derived-from") == ["onnx/model.onnx"]


def test_every_locked_installed_package_has_its_locked_version_and_hashes(document: str) -> None:
    bom = json.loads(document)
    assert bom["metadata"]["component"]["name"] == "appliance"
    assert bom["metadata"]["component"]["version"] == appliance.__version__
    by_purl = {c.get("purl"): c for c in bom["components"]}
    checked = installed(locked_pins(LOCK))
    assert len(checked) > 50, "the venv is not built from requirements/lock.txt"
    for name, version, hashes in checked:
        component = by_purl.get(f"pkg:pypi/{name}@{version}")
        assert component is not None, f"{name}=={version} missing from the SBOM"
        assert component["version"] == version
        assert hashes and hashes <= sha256s(component), name
        assert "requirements/lock.txt" in props(component, "appliance:lock"), name


def test_an_explicit_lock_written_to_a_file_gives_exactly_its_hashes(env_paths: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    proc = sbom("--lock", str(LOCK), "-o", str(out), store=env_paths[0], config=env_paths[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the temporary file was renamed, none left
    by_purl = {c.get("purl"): c for c in json.loads(out.read_text())["components"]}
    for name, version, hashes in installed(locked_pins(LOCK)):
        component = by_purl[f"pkg:pypi/{name}@{version}"]
        assert sha256s(component) == hashes, name
        assert props(component, "appliance:lock") == ["requirements/lock.txt"], name


def test_the_document_passes_the_cyclonedx_json_schema(document: str) -> None:
    version = SchemaVersion.from_version(json.loads(document)["specVersion"])
    assert version >= SchemaVersion.V1_6
    error = JsonStrictValidator(version).validate_str(document)  # the dev extra locks [json-validation]
    assert error is None, str(error)


@pytest.mark.parametrize("args", [("--lock", "requirements/no-such-lock.txt"),
                                  ("-o", "/nonexistent-dir/sbom.json")])
def test_a_bad_path_is_one_line_and_exit_2(env_paths: tuple[Path, Path], args: tuple[str, str]) -> None:
    proc = sbom(*args, store=env_paths[0], config=env_paths[1])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and args[1] in lines[0], proc.stderr
