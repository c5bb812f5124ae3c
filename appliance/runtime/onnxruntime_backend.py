"""ONNX Runtime with its execution providers (CPU, CUDA, TensorRT, OpenVINO, QNN, Core ML, ...)."""

from __future__ import annotations

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

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    formats = ("onnx",)
    module = "onnxruntime"

    def check(self, candidate: Candidate) -> None:
        ort = self.require_module()
        provider = PROVIDERS.get(candidate.device.lower())
        if provider is None:
            raise RuntimeUnavailable(f"unknown onnxruntime device {candidate.device!r}; known: {', '.join(PROVIDERS)}")
        available = ort.get_available_providers()
        if provider not in available:
            raise RuntimeUnavailable(
                f"onnxruntime {ort.__version__} has no {provider} (has {', '.join(available)})"
            )

    def load(self, model: ModelFiles, candidate: Candidate) -> OrtSession:
        ort = self.require_module()
        variant = model_variant(model, self.formats)
        provider = PROVIDERS[candidate.device.lower()]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.ctx.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No arena: it keeps every activation buffer ever needed (Piper: 89 → 186 MiB after some syntheses) for
        # no measurable speed here; see appliance/runtime/allocator.py.
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(
                str(model.file(variant, ".onnx")), sess_options=options, providers=[provider]
            )
        except Exception as exc:
            raise ModelRejected(f"onnxruntime could not load {model.model_id}: {first_error_line(exc)}") from None
        if session.get_providers()[0] != provider:
            raise ModelRejected(f"{provider} did not initialise (fell back to {session.get_providers()[0]})")
        return OrtSession(session)


class OrtSession:
    def __init__(self, session: Any) -> None:
        self._session = session
        self.inputs = [TensorSpec(i.name, tuple(i.shape), i.type) for i in session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), o.type) for o in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds), strict=True))

    def close(self) -> None:
        self._session = None
