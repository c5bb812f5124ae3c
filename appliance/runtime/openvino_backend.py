"""OpenVINO on CPU, GPU, NPU or AUTO. ONNX models are converted to IR once and cached in the model store."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
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

CACHE_KIND = "runtime-openvino-f32"  # the store cache of converted IR (float32 weights; not a model variant)
DEVICES = ("CPU", "GPU", "NPU", "AUTO")


class OpenVinoBackend(Backend):
    name = "openvino"
    formats = ("onnx",)
    module = "openvino"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._core: Any = None
        self._lock = threading.Lock()

    def core(self) -> Any:
        with self._lock:
            if self._core is None:
                ov = self.require_module()
                self._core = ov.Core()
            return self._core

    def check(self, candidate: Candidate) -> None:
        device = candidate.device.upper()
        if device not in DEVICES:
            raise RuntimeUnavailable(f"unknown OpenVINO device {candidate.device!r}; known: {', '.join(DEVICES)}")
        core = self.core()
        available = core.available_devices
        if device != "AUTO" and not any(d.split(".")[0] == device for d in available):
            raise RuntimeUnavailable(f"OpenVINO sees no {device} (devices: {', '.join(available) or 'none'})")

    def load(self, model: ModelFiles, candidate: Candidate) -> OvSession:
        ov = self.require_module()
        variant = model_variant(model, self.formats)
        onnx_path = model.file(variant, ".onnx")
        sha = model.sha256[f"{variant}/{onnx_path.name}"]
        try:
            ir = self._ir(ov, onnx_path, sha)
            config: dict[str, Any] = {}
            if candidate.device.upper() in ("CPU", "AUTO"):
                config["INFERENCE_NUM_THREADS"] = self.ctx.threads
                # OpenVINO's CPU plugin infers in bfloat16 on processors with AMX/AVX512-BF16 unless told not
                # to: Silero VAD's recurrent state then drifts up to 0.46 from float32 on real speech, enough
                # to end a turn in mid-sentence. Our models are small; float32 everywhere, same answers as the
                # other runtimes.
                config["INFERENCE_PRECISION_HINT"] = "f32"
            compiled = self.core().compile_model(ir, candidate.device.upper(), config)
        except Exception as exc:
            raise ModelRejected(f"OpenVINO could not load {model.model_id}: {first_error_line(exc)}") from None
        return OvSession(compiled)

    def _ir(self, ov: Any, onnx_path: Path, sha: str) -> Any:
        """The model as OpenVINO IR: converted once, then read back from the store's cache. Weights stay float32:
        save_model's default halves them to float16 (IR cached before that lives under the old kind, unused)."""
        if self.ctx.cache is None:
            with _root_logging_kept():
                return ov.convert_model(str(onnx_path))

        def build(directory: Path) -> None:
            with _root_logging_kept():
                model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=False)

        directory = self.ctx.cache(CACHE_KIND, sha, build)
        return self.core().read_model(str(directory / "model.xml"))


class OvSession:
    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self.inputs = [TensorSpec(p.any_name, tuple(str(d) for d in p.partial_shape), str(p.element_type))
                       for p in compiled.inputs]
        self.outputs = [TensorSpec(p.any_name, tuple(str(d) for d in p.partial_shape), str(p.element_type))
                        for p in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._compiled.create_infer_request()  # one per call: requests are not thread-safe
        results = request.infer(feeds)
        return {port.any_name: np.asarray(value) for port, value in results.items()}

    def close(self) -> None:
        self._compiled = None


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """OpenVINO's converter (ovc's init_logger) sets the root logger to ERROR and adds its own filter and handler
    on every call: that would silence the appliance's warnings for the rest of the process. Put them back."""
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:], root.filters[:] = handlers, filters
