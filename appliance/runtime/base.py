"""The small interface every inference backend implements, and the errors selection records."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from appliance.hw.profiles import Candidate
from appliance.models.store import ModelFiles

# (kind, source sha256, build(dir)) -> directory holding the derived artifact; the model store provides it.
DerivedCache = Callable[[str, str, Callable[[Path], None]], Path]


class RuntimeUnavailable(Exception):
    """The runtime cannot be used here: not installed, or the device is absent."""


class ModelRejected(Exception):
    """The runtime is present but could not load this model or gave an insane smoke result."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


class TensorSession(Protocol):
    """A loaded tensor-in / tensor-out model (ONNX Runtime, OpenVINO, LiteRT, Core ML, RKNN)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class BackendContext:
    threads: int
    cache: DerivedCache | None = None


class Backend(ABC):
    """One inference runtime. Imports its library lazily; never at module import."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # model variants it can read (catalog variant names)
    module: ClassVar[str]  # the Python module it needs

    def __init__(self, ctx: BackendContext) -> None:
        self.ctx = ctx

    def require_module(self) -> Any:
        if importlib.util.find_spec(self.module) is None:
            raise RuntimeUnavailable(f"{self.module} is not installed")
        try:
            return importlib.import_module(self.module)
        except Exception as exc:  # a broken native library must not take the device down
            raise RuntimeUnavailable(f"{self.module} failed to import: {exc}") from None

    @abstractmethod
    def check(self, candidate: Candidate) -> None:
        """Raise RuntimeUnavailable unless the library imports and the candidate's device is present."""

    @abstractmethod
    def load(self, model: ModelFiles, candidate: Candidate) -> Any:
        """Load the model for the candidate; raise ModelRejected with the reason on failure."""

    def version(self) -> str:
        mod = self.require_module()
        return str(getattr(mod, "__version__", "?"))


def first_error_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def model_variant(model: ModelFiles, formats: tuple[str, ...]) -> str:
    for fmt in formats:
        if fmt in model.variants:
            return fmt
    raise ModelRejected(f"no {'/'.join(formats)} variant of {model.model_id} in the store")
