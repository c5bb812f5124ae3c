"""LiteRT (TFLite) through ai-edge-litert or tflite-runtime, on the CPU (XNNPACK) or a delegate."""

from __future__ import annotations

import importlib.util
import threading
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

# device -> shared library of its external delegate ("cpu" uses the built-in XNNPACK).
DELEGATES = {
    "gpu": "libtensorflowlite_gpu_delegate.so",
    "edgetpu": "libedgetpu.so.1",
    "qnn": "libQnnTFLiteDelegate.so",
    "hexagon": "libhexagon_delegate.so",
}
MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class LiteRtBackend(Backend):
    name = "litert"
    formats = ("tflite",)
    module = "ai_edge_litert"

    def require_module(self) -> Any:
        for name in MODULES:
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                try:
                    return importlib.import_module(name)
                except Exception as exc:
                    raise RuntimeUnavailable(f"{name} failed to import: {exc}") from None
        raise RuntimeUnavailable("neither ai-edge-litert nor tflite-runtime is installed")

    def version(self) -> str:
        from importlib import metadata

        for dist in ("ai-edge-litert", "tflite-runtime"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return "?"

    def _delegates(self, lib: Any, device: str) -> list[Any]:
        device = device.lower()
        if device in ("cpu", "xnnpack"):
            return []
        if device not in DELEGATES:
            raise RuntimeUnavailable(f"unknown LiteRT device {device!r}; known: cpu, {', '.join(DELEGATES)}")
        try:
            return [lib.load_delegate(DELEGATES[device])]
        except (ValueError, OSError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"LiteRT {device} delegate {DELEGATES[device]} unavailable: "
                                     f"{first_error_line(exc)}") from None

    def check(self, candidate: Candidate) -> None:
        self._delegates(self.require_module(), candidate.device)

    def load(self, model: ModelFiles, candidate: Candidate) -> LiteRtSession:
        lib = self.require_module()
        variant = model_variant(model, self.formats)
        try:
            interpreter = lib.Interpreter(
                model_path=str(model.file(variant, ".tflite")),
                num_threads=self.ctx.threads,
                experimental_delegates=self._delegates(lib, candidate.device),
            )
            interpreter.allocate_tensors()
        except RuntimeUnavailable:
            raise
        except Exception as exc:
            raise ModelRejected(f"LiteRT could not load {model.model_id}: {first_error_line(exc)}") from None
        return LiteRtSession(interpreter)


class LiteRtSession:
    """Thread-safe wrapper: an Interpreter may run one inference at a time."""

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self._lock = threading.Lock()
        self._inputs = interpreter.get_input_details()
        self._outputs = interpreter.get_output_details()
        self.inputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                       for d in self._inputs]
        self.outputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                        for d in self._outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            it = self._interpreter
            resized = False
            for d in self._inputs:
                value = feeds[d["name"]]
                if tuple(value.shape) != tuple(d["shape"]):
                    it.resize_tensor_input(d["index"], value.shape)
                    resized = True
            if resized:
                it.allocate_tensors()
                self._inputs = it.get_input_details()
                self._outputs = it.get_output_details()
            for d in self._inputs:
                it.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]], dtype=d["dtype"]))
            it.invoke()
            return {d["name"]: it.get_tensor(d["index"]).copy() for d in self._outputs}

    def close(self) -> None:
        self._interpreter = None
