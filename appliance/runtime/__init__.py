"""Inference runtimes: one backend module per runtime behind one small interface, and their selection."""

from appliance.runtime.base import (
    Backend,
    BackendContext,
    ModelRejected,
    RuntimeUnavailable,
    TensorSession,
    TensorSpec,
)
from appliance.runtime.bergamot_backend import BergamotBackend
from appliance.runtime.coreml_backend import CoreMlBackend
from appliance.runtime.ctranslate2_backend import CTranslate2Backend
from appliance.runtime.litert_backend import LiteRtBackend
from appliance.runtime.onnxruntime_backend import OnnxRuntimeBackend
from appliance.runtime.openvino_backend import OpenVinoBackend
from appliance.runtime.rknn_backend import RknnBackend
from appliance.runtime.select import Attempt, Selection, plan, select

BACKEND_TYPES: tuple[type[Backend], ...] = (
    OnnxRuntimeBackend,
    OpenVinoBackend,
    LiteRtBackend,
    CoreMlBackend,
    CTranslate2Backend,
    RknnBackend,
    BergamotBackend,
)


def make_backends(ctx: BackendContext) -> dict[str, Backend]:
    """Every backend, wired once with the context; none imports its library until used."""
    return {cls.name: cls(ctx) for cls in BACKEND_TYPES}


__all__ = [
    "BACKEND_TYPES",
    "Attempt",
    "Backend",
    "BackendContext",
    "ModelRejected",
    "RuntimeUnavailable",
    "Selection",
    "TensorSession",
    "TensorSpec",
    "make_backends",
    "plan",
    "select",
]
