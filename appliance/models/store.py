"""Content-addressed model store: verified blobs, immutable version trees, an atomically switched pointer.

Layout under the store root::

    blobs/sha256/<hex>                 every file once, read-only, named by its checksum
    trees/<id>/<digest>/<variant>/<f>  one version of a model: hard links to blobs, plus manifest.json
    active/<id>                        symlink to the version in use, replaced by rename (atomic)
    cache/<kind>/<source-sha256>/      artifacts derived from a blob (OpenVINO IR, TFLite), with manifest
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from appliance.config.paths import data_root
from appliance.errors import ApplianceError
from appliance.models.catalog import FileEntry, ModelEntry, Source, files_digest

CHUNK = 1 << 20
Progress = Callable[[int], None]


class StoreError(ApplianceError):
    """A model cannot be provisioned or used; the message names the model and the fix."""


def default_store_path() -> Path:
    return data_root() / "models"


@dataclass
class ModelFiles:
    """A provisioned model as the runtimes see it: per variant (format), its files by name."""

    model_id: str
    kind: str
    task: str
    digest: str
    variants: dict[str, dict[str, Path]]
    sha256: dict[str, str] = field(default_factory=dict)  # "variant/name" -> checksum

    def file(self, variant: str, suffix: str = "") -> Path:
        """The variant's main file (the one whose name ends with ``suffix``), or its directory."""
        files = self.variants[variant]
        if not suffix:
            return next(iter(files.values())).parent
        return next(p for n, p in files.items() if n.endswith(suffix))


@dataclass
class Problem:
    model_id: str
    message: str


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ---- provisioning -------------------------------------------------------------------------
    def pull(self, entry: ModelEntry, force: bool = False, progress: Progress | None = None) -> Path:
        """Copy the model's files from their packages into the store, verify, and activate atomically."""
        for files in entry.variants.values():
            for f in files:
                self._ensure_blob(entry, f, force, progress)
        tree = self.root / "trees" / entry.id / entry.digest()
        if force or not tree.exists():
            self._build_tree(entry, tree)
        self._activate(entry.id, tree)
        return tree

    def source_paths(self, entry: ModelEntry, f: FileEntry) -> list[Path]:
        return [_locate(entry.id, src) for src in f.sources]

    def _ensure_blob(self, entry: ModelEntry, f: FileEntry, force: bool, progress: Progress | None) -> Path:
        blob = self.blob_path(f.sha256)
        if blob.exists() and not force and blob.stat().st_size == f.size:
            if progress:
                progress(f.size)
            return blob
        sources = self.source_paths(entry, f)
        blob.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=blob.parent, prefix=".incoming-", delete=False) as tmp:
            try:
                for src in sources:
                    with src.open("rb") as fh:
                        while chunk := fh.read(CHUNK):
                            digest.update(chunk)
                            tmp.write(chunk)
                            if progress:
                                progress(len(chunk))
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        if digest.hexdigest() != f.sha256:
            os.unlink(tmp.name)
            packages = " ".join(sorted({s.package for s in f.sources}))
            raise StoreError(
                f"model {entry.id}: {f.name} from package {packages} has sha256 {digest.hexdigest()[:12]}…, "
                f"the catalog expects {f.sha256[:12]}…; fix: pip install --force-reinstall {packages}"
            )
        os.chmod(tmp.name, 0o444)
        os.replace(tmp.name, blob)
        return blob

    def _build_tree(self, entry: ModelEntry, tree: Path) -> None:
        staging = Path(tempfile.mkdtemp(dir=self._mk(tree.parent), prefix=".staging-"))
        listing = []
        for variant, files in entry.variants.items():
            (staging / variant).mkdir()
            for f in files:
                _link_or_copy(self.blob_path(f.sha256), staging / variant / f.name)
                listing.append({"variant": variant, "name": f.name, "sha256": f.sha256, "size": f.size})
        manifest = {"id": entry.id, "kind": entry.kind, "task": entry.task, "digest": entry.digest(), "files": listing}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)

    def _activate(self, model_id: str, tree: Path) -> None:
        _switch(self._mk(self.root / "active") / model_id, tree)

    # ---- updates (the fleet agent) ----------------------------------------------------------------
    @property
    def staging(self) -> Path:
        """Where downloads land before they are verified: on the store's filesystem (a rename adopts them),
        never in RAM or a tmpfs."""
        return self._mk(self.root / "staging")

    def adopt_blob(self, path: Path, sha256: str) -> Path:
        """Move a verified file (on the store's filesystem) into the blobs, read-only."""
        blob = self.blob_path(sha256)
        self._mk(blob.parent)
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(path, 0o444)
        os.replace(path, blob)
        return blob

    def install_tree(self, manifest: dict) -> Path:
        """Build (once) the version tree a manifest describes from blobs already in the store; not activated."""
        digest = files_digest((f["variant"], f["name"], f["sha256"]) for f in manifest["files"])
        tree = self.root / "trees" / manifest["id"] / digest
        if (tree / "manifest.json").exists():
            return tree
        staging = Path(tempfile.mkdtemp(dir=self._mk(tree.parent), prefix=".staging-"))
        listing = []
        for f in manifest["files"]:
            self._mk(staging / f["variant"])
            _link_or_copy(self.blob_path(f["sha256"]), staging / f["variant"] / f["name"])
            listing.append({k: f[k] for k in ("variant", "name", "sha256", "size")})
        kept = {k: manifest[k] for k in ("id", "kind", "task") if k in manifest}
        (staging / "manifest.json").write_text(json.dumps({**kept, "digest": digest, "version": manifest.get("version"),
                                                           "files": listing}, indent=1))
        os.replace(staging, tree)
        return tree

    def activate(self, model_id: str, tree: Path) -> None:
        """Make ``tree`` the version in use, remembering the one it replaces as ``previous/<id>`` (rollback)."""
        link = self.root / "active" / model_id
        if link.is_symlink() and link.resolve() != tree.resolve():
            _switch(self._mk(self.root / "previous") / model_id, link.resolve())
        self._activate(model_id, tree)

    def previous(self, model_id: str) -> Path | None:
        link = self.root / "previous" / model_id
        return link.resolve() if link.is_symlink() and link.exists() else None

    def active_tree(self, model_id: str) -> Path | None:
        link = self.root / "active" / model_id
        return link.resolve() if link.is_symlink() and link.exists() else None

    def prune(self, model_id: str) -> list[Path]:
        """Remove the model's trees other than the active and the previous one, then every blob that no tree's
        manifest lists; returns what was removed."""
        keep = {t for t in (self.active_tree(model_id), self.previous(model_id)) if t is not None}
        removed = [t for t in (self.root / "trees" / model_id).glob("*") if t.is_dir() and t.resolve() not in keep]
        for tree in removed:
            shutil.rmtree(tree)
        if removed:
            used = {f["sha256"] for m in (self.root / "trees").glob("*/*/manifest.json")
                    for f in json.loads(m.read_text())["files"]}
            for blob in (self.root / "blobs" / "sha256").glob("*"):
                if blob.name not in used:
                    blob.unlink()
                    removed.append(blob)
        return removed

    # ---- use ------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def is_active(self, model_id: str) -> bool:
        return (self.root / "active" / model_id).exists()

    def active_digest(self, model_id: str) -> str | None:
        link = self.root / "active" / model_id
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def resolve(self, model_id: str, kind: str | None = None) -> ModelFiles:
        """The active version's files, after a quick check (existence and size) of each."""
        link = self.root / "active" / model_id
        if not link.exists():
            raise StoreError(
                f"model {model_id} is not provisioned in {self.root}; fix: appliance models pull {model_id}"
            )
        return self.files_at(link.resolve())  # pin the version once: a concurrent switch must not mix two

    def files_at(self, tree: Path) -> ModelFiles:
        """A version tree's files (active or not), after a quick check (existence and size) of each."""
        manifest = json.loads((tree / "manifest.json").read_text())
        model_id = manifest["id"]
        variants: dict[str, dict[str, Path]] = {}
        checksums = {}
        for f in manifest["files"]:
            path = tree / f["variant"] / f["name"]
            if not path.exists() or path.stat().st_size != f["size"]:
                state = "missing" if not path.exists() else f"truncated or replaced ({path.stat().st_size} bytes)"
                raise StoreError(
                    f"model {model_id}: file {f['variant']}/{f['name']} is {state}; "
                    f"fix: appliance models pull --force {model_id}"
                )
            variants.setdefault(f["variant"], {})[f["name"]] = path
            checksums[f"{f['variant']}/{f['name']}"] = f["sha256"]
        files = ModelFiles(model_id, manifest["kind"], manifest["task"], manifest["digest"], variants, checksums)
        for variant, paths in list(self.derived(files)):
            files.variants.setdefault(variant, paths)
        return files

    def verify(self, model_id: str) -> list[Problem]:
        """Full check: every file of the active version (and its derived artifacts) against its sha256."""
        try:
            files = self.resolve(model_id)
        except StoreError as exc:
            return [Problem(model_id, str(exc))]
        problems = []
        for key, expected in files.sha256.items():
            variant, name = key.split("/", 1)
            actual = sha256_file(files.variants[variant][name])
            if actual != expected:
                problems.append(Problem(model_id, f"model {model_id}: file {key} is corrupted (sha256 "
                                        f"{actual[:12]}…, expected {expected[:12]}…); "
                                        f"fix: appliance models pull --force {model_id}"))
        return problems

    # ---- derived artifacts (conversions) -------------------------------------------------------
    def cache_dir(self, kind: str, source_sha256: str) -> Path:
        return self.root / "cache" / kind / source_sha256

    def put_derived(self, kind: str, source_sha256: str, build: Callable[[Path], None]) -> Path:
        """Build a derived artifact into a staging dir, record checksums, and rename it into place."""
        target = self.cache_dir(kind, source_sha256)
        if (target / "manifest.json").exists():
            return target
        staging = Path(tempfile.mkdtemp(dir=self._mk(target.parent), prefix=".build-"))
        try:
            build(staging)
            files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / "manifest.json").write_text(json.dumps({"source": source_sha256, "files": files}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def derived_sha256(self, kind: str, source_sha256: str) -> dict[str, str]:
        """The recorded checksums of a built derived artifact (file name -> sha256); empty when not built."""
        manifest = self.cache_dir(kind, source_sha256) / "manifest.json"
        try:
            return dict(json.loads(manifest.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def derived(self, files: ModelFiles) -> Iterator[tuple[str, dict[str, Path]]]:
        """Derived variants (e.g. ``tflite``) already built from this model's files."""
        for sha in list(files.sha256.values()):
            for kind_dir in sorted((self.root / "cache").glob(f"*/{sha}")):
                manifest = kind_dir / "manifest.json"
                if _runtime_cache(kind_dir.parent.name) or not manifest.exists():
                    continue
                names = json.loads(manifest.read_text())["files"]
                yield kind_dir.parent.name, {n: kind_dir / n for n in names}
                files.sha256.update({f"{kind_dir.parent.name}/{n}": s for n, s in names.items()})

    def _mk(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path


def _runtime_cache(kind: str) -> bool:
    """A runtime's own cache (e.g. OpenVINO IR, kinds named ``runtime-…``; ``openvino`` is the name of the old
    float16 IR), not a derived variant of the model."""
    return kind.startswith("runtime-") or kind == "openvino"


def _locate(model_id: str, src: Source) -> Path:
    try:
        dist = metadata.distribution(src.package)
    except metadata.PackageNotFoundError:
        raise StoreError(
            f"model {model_id} needs package {src.package}, which is not installed; "
            f"fix: pip install {src.package} (or make models)"
        ) from None
    path = Path(str(dist.locate_file(src.path)))
    if not path.is_file():
        raise StoreError(
            f"model {model_id}: package {src.package} {dist.version} has no {src.path}; "
            f"fix: pip install --force-reinstall {src.package}"
        )
    return path


def _switch(link: Path, tree: Path) -> None:
    """Point ``link`` at ``tree`` by renaming a new symlink over it: atomic, so a crash leaves old or new."""
    tmp = link.with_name(f".{link.name}.switch")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(tree, link.parent))
    os.replace(tmp, link)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
