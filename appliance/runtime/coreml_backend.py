"""Core ML through coremltools. It predicts only on macOS; elsewhere it reports why it is unavailable."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from appliance.hw.profiles import Candidate
from appliance.models.store import ModelFiles
from appliance.runtime.base import (
    Backend,
    ModelRejected,
    RuntimeUnavailable,
    TensorSpec,
    first_error_line,
    model_variant,
)

COMPUTE_UNITS = {"ane": "CPU_AND_NE", "gpu": "CPU_AND_GPU", "cpu": "CPU_ONLY", "all": "ALL"}


class CoreMlBackend(Backend):
    name = "coreml"
    formats = ("mlpackage",)
    module = "coremltools"

    def __init__(self, *args: Any, system: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.system = system or platform.system()

    def check(self, candidate: Candidate) -> None:
        if candidate.device.lower() not in COMPUTE_UNITS:
            raise RuntimeUnavailable(f"unknown Core ML device {candidate.device!r}; known: {', '.join(COMPUTE_UNITS)}")
        if self.system != "Darwin":
            raise RuntimeUnavailable(f"Core ML predicts only on macOS; this is {self.system}")
        self.require_module()

    def load(self, model: ModelFiles, candidate: Candidate) -> CoreMlSession:
        ct = self.require_module()
        variant = model_variant(model, self.formats)
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[candidate.device.lower()])
        try:
            mlmodel = ct.models.MLModel(str(model.file(variant)), compute_units=units)
        except Exception as exc:
            raise ModelRejected(f"Core ML could not load {model.model_id}: {first_error_line(exc)}") from None
        return CoreMlSession(mlmodel)


class CoreMlSession:
    def __init__(self, mlmodel: Any) -> None:
        self._model = mlmodel
        spec = mlmodel.get_spec().description
        self.inputs = [TensorSpec(i.name, (), "float32") for i in spec.input]
        self.outputs = [TensorSpec(o.name, (), "float32") for o in spec.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._model.predict(feeds).items()}

    def close(self) -> None:
        self._model = None
