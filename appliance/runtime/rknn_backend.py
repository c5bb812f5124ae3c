"""Rockchip NPU through rknn-toolkit-lite2 (aarch64 Rockchip boards), for models compiled to .rknn."""

from __future__ import annotations

from pathlib import Path
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

NPU_EVIDENCE = ("/proc/debug/rknpu/version", "/sys/kernel/debug/rknpu/version")


class RknnBackend(Backend):
    name = "rknn"
    formats = ("rknn",)
    module = "rknnlite"

    def check(self, candidate: Candidate) -> None:
        if candidate.device.lower() != "npu":
            raise RuntimeUnavailable(f"unknown RKNN device {candidate.device!r}; known: npu")
        if not any(Path(p).exists() for p in NPU_EVIDENCE):
            raise RuntimeUnavailable("no Rockchip NPU driver (no /proc/debug/rknpu/version)")
        self.require_module()

    def load(self, model: ModelFiles, candidate: Candidate) -> RknnSession:
        api = self.require_module()
        variant = model_variant(model, self.formats)
        rknn = api.api.RKNNLite()
        if rknn.load_rknn(str(model.file(variant, ".rknn"))) != 0 or rknn.init_runtime() != 0:
            raise ModelRejected(f"RKNN could not load {model.model_id}")
        return RknnSession(rknn)

    def version(self) -> str:
        try:
            return super().version()
        except RuntimeUnavailable as exc:
            return first_error_line(exc)


class RknnSession:
    """RKNN takes and returns positional tensors; names come from the catalog's order."""

    def __init__(self, rknn: Any) -> None:
        self._rknn = rknn
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._rknn.inference(inputs=list(feeds.values()))
        return {f"output{i}": np.asarray(o) for i, o in enumerate(outputs)}

    def close(self) -> None:
        self._rknn.release()
