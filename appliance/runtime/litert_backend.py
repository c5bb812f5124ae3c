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
    """Thread-safe wrapper (an Interpreter runs one inference at a time). Where the model has a signature,
    tensors are named by it (the names of the model it was converted from); otherwise by tensor name."""

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self._lock = threading.Lock()
        signatures = interpreter.get_signature_list()
        self._runner = interpreter.get_signature_runner(next(iter(signatures))) if signatures else None
        if self._runner is not None:
            ins, outs = self._runner.get_input_details(), self._runner.get_output_details()
            self.inputs = [_spec(name, d) for name, d in ins.items()]
            self.outputs = [_spec(name, d) for name, d in outs.items()]
        else:
            self.inputs = [_spec(d["name"], d) for d in interpreter.get_input_details()]
            self.outputs = [_spec(d["name"], d) for d in interpreter.get_output_details()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._runner is not None:
                return {k: np.array(v) for k, v in self._runner(**feeds).items()}
            return self._run_tensors(feeds)

    def _run_tensors(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._interpreter
        details = it.get_input_details()
        if any(tuple(feeds[d["name"]].shape) != tuple(d["shape"]) for d in details):
            for d in details:
                it.resize_tensor_input(d["index"], feeds[d["name"]].shape)
            it.allocate_tensors()
            details = it.get_input_details()
        for d in details:
            it.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]], dtype=d["dtype"]))
        it.invoke()
        return {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}

    def close(self) -> None:
        self._runner = None
        self._interpreter = None


def _spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name, tuple(int(x) for x in detail["shape"]), np.dtype(detail["dtype"]).name)
