"""CTranslate2 for Whisper: device (cpu, cuda) and compute type (int8, int8_float16, float16, ...)."""

from __future__ import annotations

from typing import Any

from appliance.hw.profiles import Candidate
from appliance.models.store import ModelFiles
from appliance.runtime.base import Backend, ModelRejected, RuntimeUnavailable, first_error_line, model_variant


class CTranslate2Backend(Backend):
    name = "ctranslate2"
    formats = ("ct2",)
    module = "ctranslate2"

    def check(self, candidate: Candidate) -> None:
        ct2 = self.require_module()
        device = candidate.device.lower()
        if device not in ("cpu", "cuda"):
            raise RuntimeUnavailable(f"unknown CTranslate2 device {candidate.device!r}; known: cpu, cuda")
        if device == "cuda" and ct2.get_cuda_device_count() == 0:
            raise RuntimeUnavailable("CTranslate2 finds no CUDA device")
        supported = ct2.get_supported_compute_types(device)
        if candidate.precision and candidate.precision not in supported:
            raise RuntimeUnavailable(
                f"compute type {candidate.precision} not supported on {device} "
                f"(supported: {', '.join(sorted(supported))})"
            )

    def load(self, model: ModelFiles, candidate: Candidate) -> Any:
        ct2 = self.require_module()
        variant = model_variant(model, self.formats)
        if model.kind != "whisper":
            raise ModelRejected(f"the CTranslate2 backend serves Whisper models; {model.model_id} is {model.kind}")
        try:
            return ct2.models.Whisper(
                str(model.file(variant)),
                device=candidate.device.lower(),
                compute_type=candidate.precision or "default",
                intra_threads=self.ctx.threads,
            )
        except Exception as exc:
            raise ModelRejected(f"CTranslate2 could not load {model.model_id}: {first_error_line(exc)}") from None
