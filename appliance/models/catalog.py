"""The model catalog (models/catalog.yaml): ids, tasks, sources, checksums, licences, variants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.config.paths import shipped
from appliance.errors import ApplianceError
from appliance.hw.profiles import Task

DEFAULT_CATALOG = shipped("models/catalog.yaml")


class CatalogError(ApplianceError):
    """The catalog file is unreadable or invalid, or names an unknown model."""


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    package: str = Field(description="Distribution name as pip knows it.")
    path: str = Field(description="Path of the file inside the installed distribution.")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    source: Source | None = None
    parts: list[Source] | None = Field(None, description="Sources joined in order into one file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)

    @model_validator(mode="after")
    def _one_origin(self) -> FileEntry:
        if (self.source is None) == (self.parts is None):
            raise ValueError(f"file {self.name}: give exactly one of source or parts")
        return self

    @property
    def sources(self) -> list[Source]:
        return [self.source] if self.source else list(self.parts or [])


class Derivation(BaseModel):
    """A variant built at provisioning time from another variant's file by a converter script."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(pattern=r"^[a-z0-9]+/[^/]+$", description="variant/file it is built from")
    name: str = Field(description="File name of the result.")
    converter: str = Field(pattern=r"^[a-z0-9_]+$", description="Script in appliance/models/converters/.")
    note: str = ""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    task: Task
    kind: str = Field(description="Model family; selects the smoke test (whisper, piper, silero-vad, ...).")
    description: str
    languages: list[str]
    licence: str
    variants: dict[str, list[FileEntry]] = Field(description="Format (ct2, onnx, tflite, ...) -> files.")
    derived: dict[str, Derivation] = Field(default_factory=dict, description="Variants built at provisioning.")

    @model_validator(mode="after")
    def _derived_sources_exist(self) -> ModelEntry:
        names = {f"{v}/{f.name}" for v, files in self.variants.items() for f in files}
        for variant, how in self.derived.items():
            if how.source not in names:
                raise ValueError(f"derived {variant}: source {how.source} is not one of the model's files")
        return self

    @property
    def size(self) -> int:
        return sum(f.size for files in self.variants.values() for f in files)

    @property
    def packages(self) -> list[str]:
        return sorted({s.package for files in self.variants.values() for f in files for s in f.sources})

    def sha256_of(self, key: str) -> str:
        variant, name = key.split("/", 1)
        return next(f.sha256 for f in self.variants[variant] if f.name == name)

    def digest(self) -> str:
        """Version id: a hash of every variant's file names and checksums."""
        return files_digest((v, f.name, f.sha256) for v, files in self.variants.items() for f in files)


def files_digest(files: Iterable[tuple[str, str, str]]) -> str:
    """A model version's id from its (variant, file name, sha256) triples: the same files, the same id."""
    return hashlib.sha256(json.dumps(sorted(map(list, files))).encode()).hexdigest()[:16]


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelEntry]

    def get(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        known = ", ".join(m.id for m in self.models)
        raise CatalogError(f"unknown model {model_id!r}; the catalog has: {known}")


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or DEFAULT_CATALOG
    try:
        catalog = Catalog.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"model catalog {path}: cannot read: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"model catalog {path}: {problems}") from None
    ids = [m.id for m in catalog.models]
    if len(ids) != len(set(ids)):
        raise CatalogError(f"model catalog {path}: duplicate ids")
    return catalog
