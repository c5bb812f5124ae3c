"""Model catalog and store: provisioning from packages, checksums, atomic activation, clear failures."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from appliance.models import Catalog, CatalogError, ModelStore, StoreError, load_catalog
from appliance.models.catalog import ModelEntry
from appliance.models.store import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def entry_with(catalog: Catalog, model_id: str, **changes: object) -> ModelEntry:
    data = catalog.get(model_id).model_dump()
    data.update(changes)
    return ModelEntry.model_validate(data)


def test_catalog_is_complete(catalog: Catalog) -> None:
    ids = {m.id for m in catalog.models}
    assert {"whisper-tiny-en", "whisper-base", "piper-en-us-joe-medium", "silero-vad-v6", "speaker-embedder"} <= ids
    for entry in catalog.models:
        assert entry.licence and entry.languages and entry.size > 0
        assert entry.id in (ROOT / "models" / "LICENSES.md").read_text(), f"{entry.id} licence not recorded"


def test_pull_provisions_verified_content_addressed_files(store: ModelStore, catalog: Catalog) -> None:
    for entry in catalog.models:
        files = store.resolve(entry.id)
        assert files.digest == entry.digest() == store.active_digest(entry.id)
        for variant, listed in entry.variants.items():
            for f in listed:
                path = files.variants[variant][f.name]
                assert path.stat().st_size == f.size
                assert os.path.samefile(path, store.blob_path(f.sha256))  # one copy, hard-linked
    assert store.verify("whisper-base") == []  # parts joined in order give the catalog's checksum


def test_pull_reports_progress_in_bytes(tmp_path: Path, catalog: Catalog) -> None:
    seen: list[int] = []
    entry = catalog.get("silero-vad-v6")
    ModelStore(tmp_path).pull(entry, progress=seen.append)
    assert sum(seen) == entry.size


def test_activation_switches_atomically_between_versions(tmp_path: Path, catalog: Catalog) -> None:
    store = ModelStore(tmp_path)
    entry = catalog.get("speaker-embedder")
    first = store.pull(entry)
    changed = entry_with(catalog, "speaker-embedder", description="same bytes, new version id")
    changed.variants["onnx"][0].name = "renamed.onnx"
    second = store.pull(changed)
    assert first != second and store.active_digest(entry.id) == changed.digest()
    assert "renamed.onnx" in store.resolve(entry.id).variants["onnx"]
    assert not list((tmp_path / "active").glob(".*"))  # no switch leftovers
    store.pull(entry)
    assert store.active_digest(entry.id) == entry.digest()


def test_concurrent_readers_never_see_a_half_switched_model(tmp_path: Path, catalog: Catalog) -> None:
    store = ModelStore(tmp_path)
    entry = catalog.get("silero-vad-v6")
    other = entry_with(catalog, "silero-vad-v6")
    other.variants["onnx"][0].name = "other.onnx"
    store.pull(entry)
    errors: list[Exception] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                store.resolve(entry.id)
            except Exception as exc:
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        store.pull(other if i % 2 else entry)
    stop.set()
    reader.join()
    assert errors == []


def test_missing_package_names_model_package_and_fix(tmp_path: Path, catalog: Catalog) -> None:
    entry = entry_with(catalog, "silero-vad-v6")
    entry.variants["onnx"][0].source = entry.variants["onnx"][0].source.model_copy(  # type: ignore[union-attr]
        update={"package": "appliance-no-such-voice-pack"})
    with pytest.raises(StoreError) as err:
        ModelStore(tmp_path).pull(entry)
    message = str(err.value)
    assert "silero-vad-v6" in message and "appliance-no-such-voice-pack" in message
    assert "pip install appliance-no-such-voice-pack" in message


def test_checksum_mismatch_is_refused_and_nothing_activated(tmp_path: Path, catalog: Catalog) -> None:
    entry = entry_with(catalog, "silero-vad-v6")
    entry.variants["onnx"][0].sha256 = "0" * 64
    store = ModelStore(tmp_path)
    with pytest.raises(StoreError, match="silero-vad-v6: model.onnx from package faster-whisper has sha256"):
        store.pull(entry)
    assert not store.is_active("silero-vad-v6")
    assert not list(tmp_path.rglob(".incoming-*"))


def test_corrupted_and_truncated_files_are_named_with_the_fix(tmp_path: Path, catalog: Catalog) -> None:
    store = ModelStore(tmp_path)
    entry = catalog.get("speaker-embedder")
    store.pull(entry)
    blob = store.blob_path(entry.variants["onnx"][0].sha256)
    blob.chmod(0o644)
    with blob.open("r+b") as fh:  # flip bytes in place: same size, wrong content
        fh.seek(1000)
        fh.write(b"\xff" * 16)
    problems = store.verify(entry.id)
    assert len(problems) == 1
    assert "speaker-embedder: file onnx/model.onnx is corrupted" in problems[0].message
    assert "appliance models pull --force speaker-embedder" in problems[0].message
    with blob.open("r+b") as fh:
        fh.truncate(100)
    with pytest.raises(StoreError, match="onnx/model.onnx is truncated.*pull --force speaker-embedder"):
        store.resolve(entry.id)
    store.pull(entry, force=True)  # the fix the message gives works
    assert store.verify(entry.id) == []
    assert sha256_file(blob) == entry.variants["onnx"][0].sha256


def test_unprovisioned_model_says_how_to_pull(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="whisper-base is not provisioned.*appliance models pull whisper-base"):
        ModelStore(tmp_path).resolve("whisper-base")


def test_bad_catalog_is_reported(tmp_path: Path, catalog: Catalog) -> None:
    data = yaml.safe_load((ROOT / "models" / "catalog.yaml").read_text())
    data["models"][0]["variants"]["ct2"][0]["sha256"] = "xyz"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match=r"models\.0\.variants\.ct2\.0\.sha256"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="unknown model 'whisper-huge'"):
        catalog.get("whisper-huge")
