"""What a release adds to the repository: model versions (a manifest plus one target per file, stored once by
hash, with binary deltas from the previous version where they pay), configuration bundles and firmware images;
and `publish`, which signs a new snapshot and timestamp so that devices see them.

Target paths and their custom fields (what the device agent selects on; documented in docs/fleet.md)::

    models/<id>/<version>/manifest.json  kind=model, model_id, model_kind, task, languages, tags, min_appliance,
                                         size (bytes of every file)
    models/blobs/<sha256>                kind=blob (one file of a model; its hash is its name)
    models/deltas/<from>-<to>.zst        kind=delta (zstd --patch-from from blob <from> to blob <to>)
    config/<name>/<version>.toml         kind=config, name, tags, min_appliance
    firmware/<board>/<version>/<file>    kind=firmware, board, slots, tags, min_appliance

"Added" targets are signed into their role at once but reach devices only when `publish` references that
role version from a new snapshot: stage many changes, then publish once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from appliance.config.files import write_atomic
from appliance.models import delta
from appliance.release.repository import FileRepository, RepositoryError

DELTA_WORTH = 0.5  # offer a delta only when it is smaller than this share of the full file


@dataclass
class Release:
    """Descriptive fields of a model, config or firmware target."""

    version: int | None = None  # None: one more than the newest published
    tags: list[str] = field(default_factory=list)  # profile names or device tags; empty: every device
    min_appliance: str = "0"
    languages: list[str] = field(default_factory=list)


def add_blob(repo: FileRepository, role: str, path: str, local: Path, custom: dict[str, Any]) -> TargetFile:
    """Copy (or hard-link) ``local`` into the targets tree under its hash and sign it into ``role``."""
    target = TargetFile.from_file(path, str(local), ["sha256"])
    target.unrecognized_fields["custom"] = custom
    stored = repo.target_file_path(target)
    if not stored.exists():
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_name(f".{stored.name}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, stored)
    with repo.edit_targets(role) as targets:
        targets.targets[path] = target
    return target


def targets_of(repo: FileRepository, role: str, kind: str) -> dict[str, TargetFile]:
    return {p: t for p, t in repo.targets(role).targets.items() if t.custom.get("kind") == kind}


def add_model(repo: FileRepository, tree: Path, release: Release) -> str:
    """Publish a model version from a store tree (``manifest.json`` + ``<variant>/<file>``, as `appliance
    models pull` writes it, or a directory laid out the same way); returns the manifest's target path."""
    try:
        manifest = json.loads((tree / "manifest.json").read_text())
        model_id, files = manifest["id"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{tree}: no readable manifest.json with id and files ({exc})") from None
    published = {int(t.custom["version"]): t for t in targets_of(repo, "models", "model").values()
                 if t.custom.get("model_id") == model_id}
    version = release.version or max(published, default=0) + 1
    if version in published:
        raise RepositoryError(f"model {model_id} version {version} is already published; fix: --version higher")
    previous = _manifest(repo, published[max(published)]) if published else None
    old_files = {(f["variant"], f["name"]): f["sha256"] for f in (previous or {}).get("files", [])}
    listing = []
    for f in files:
        local = tree / f["variant"] / f["name"]
        blob = add_blob(repo, "models", f"models/blobs/{f['sha256']}", local, {"kind": "blob"})
        if blob.hashes["sha256"] != f["sha256"] or blob.length != f["size"]:
            raise RepositoryError(f"{local}: sha256 or size differs from the tree's manifest.json")
        entry = {"variant": f["variant"], "name": f["name"], "sha256": f["sha256"], "size": f["size"],
                 "target": blob.path, "deltas": {}}
        old = old_files.get((f["variant"], f["name"]))
        if old and old != f["sha256"]:
            entry["deltas"] = _offer_delta(repo, old, f["sha256"], local)
        listing.append(entry)
    document = {**{k: manifest[k] for k in ("id", "kind", "task") if k in manifest},
                "digest": manifest.get("digest", ""), "version": version, "files": listing}
    path = f"models/{model_id}/{version}/manifest.json"
    staging = repo.root_dir / ".staging" / f"{model_id}-{version}.json"
    write_atomic(staging, json.dumps(document, indent=1, sort_keys=True).encode(), parents=True)
    add_blob(repo, "models", path, staging, {
        "kind": "model", "model_id": model_id, "model_kind": manifest.get("kind", ""), "task": manifest.get("task", ""),
        "version": version, "languages": release.languages, "tags": release.tags,
        "min_appliance": release.min_appliance, "size": sum(int(f["size"]) for f in files)})
    staging.unlink()
    return path


def _offer_delta(repo: FileRepository, old_sha: str, new_sha: str, new: Path) -> dict[str, str]:
    old_target = repo.targets("models").targets.get(f"models/blobs/{old_sha}")
    if old_target is None:
        return {}
    patch = delta.make(repo.target_file_path(old_target), new)
    if patch is None or len(patch) > DELTA_WORTH * new.stat().st_size:
        return {}
    staging = repo.root_dir / ".staging" / f"{old_sha}-{new_sha}.zst"
    write_atomic(staging, patch, parents=True)
    path = f"models/deltas/{old_sha}-{new_sha}.zst"
    add_blob(repo, "models", path, staging, {"kind": "delta", "from": old_sha, "to": new_sha})
    staging.unlink()
    return {old_sha: path}


def _manifest(repo: FileRepository, target: TargetFile) -> dict[str, Any]:
    return json.loads(repo.target_file_path(target).read_text())


def add_config(repo: FileRepository, name: str, toml: Path, release: Release) -> str:
    """Publish a configuration bundle (a settings TOML, validated against the settings schema first)."""
    from appliance.config.loader import validate_toml

    validate_toml(toml)  # raises the loader's one-line error naming the key
    version = _next_version(repo, "config", "name", name, release)
    path = f"config/{name}/{version}.toml"
    add_blob(repo, "config", path, toml, {"kind": "config", "name": name, "version": version,
                                          "tags": release.tags, "min_appliance": release.min_appliance})
    return path


def add_firmware(repo: FileRepository, board: str, image: Path, release: Release, slots: str = "ab") -> str:
    """Publish a firmware bundle (a root filesystem image for the inactive slot of ``board``)."""
    version = _next_version(repo, "firmware", "board", board, release)
    path = f"firmware/{board}/{version}/{image.name}"
    add_blob(repo, "firmware", path, image, {"kind": "firmware", "board": board, "version": version,
                                             "slots": {"layout": slots, "partition": "root"},
                                             "tags": release.tags, "min_appliance": release.min_appliance})
    return path


def _next_version(repo: FileRepository, kind: str, field: str, value: str, release: Release) -> int:
    """The release's version of the ``kind`` target whose ``field`` is ``value``: as given, or one above the
    newest published; a version published already is an error."""
    published = [int(t.custom["version"]) for t in targets_of(repo, kind, kind).values()
                 if t.custom.get(field) == value]
    version = release.version or max(published, default=0) + 1
    if version in published:
        raise RepositoryError(f"{kind} {value} version {version} is already published; fix: --version higher")
    return version


def publish(repo: FileRepository) -> tuple[int, int]:
    """Sign a snapshot of every role's newest version and a timestamp of it (a new timestamp even when
    nothing changed, so that a timer keeps it fresh); returns (snapshot version, timestamp version)."""
    repo.do_snapshot()
    repo.do_timestamp(force=True)
    return repo.snapshot().version, repo.timestamp().version
