"""The composition root: wire settings, hardware, profile, catalog, store, runtimes and the model pool once.

Entry points (CLI, supervisor) build one Device and pass its parts down; nothing below reaches up for it.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.hw import HardwareReport, ProfileMatch, load_profiles, match_profile, probe
from appliance.hw.profiles import Candidate
from appliance.models import Catalog, ModelStore, default_store_path, load_catalog
from appliance.models.residency import Lease, ModelPool, Pinned
from appliance.models.store import ModelFiles
from appliance.runtime import Backend, BackendContext, Selection, allocator, make_backends, select
from appliance.runtime.routes import Routes
from appliance.voice.asr import WhisperAsr
from appliance.voice.endpoint import EndpointOptions
from appliance.voice.escalate import AsrEscalation
from appliance.voice.mt import BergamotTranslator, Translator, UpstreamTranslator
from appliance.voice.stack import VoiceStack
from appliance.voice.tts import PiperVoice, Voice

log = logging.getLogger(__name__)


class ModelUnavailable(ApplianceError):
    """No candidate runtime could run a model."""


@dataclass
class Device:
    settings: Settings
    report: HardwareReport
    match: ProfileMatch
    catalog: Catalog
    store: ModelStore
    backends: dict[str, Backend]
    threads: int
    pool: ModelPool = field(init=False)
    routes: Routes = field(init=False)  # the upstream routes and their breakers, one set for the process
    selections: dict[str, Selection] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)  # model id -> the version (digest) last loaded
    _held: ExitStack = field(default_factory=ExitStack)

    @classmethod
    def open(cls, settings: Settings) -> Device:
        allocator.tune()  # before any runtime loads
        report = probe(settings.hw.root)
        match = match_profile(report, load_profiles(settings.hw.profiles_dir), settings.hw.profile)
        threads = settings.runtime.threads or max(1, min(match.profile.threads, os.cpu_count() or 1))
        store = ModelStore(settings.models.store or default_store_path())
        backends = make_backends(BackendContext(threads=threads, cache=store.put_derived))
        device = cls(settings, report, match, load_catalog(settings.models.catalog), store, backends, threads)
        budget_mb = settings.runtime.memory_budget_mb or match.profile.memory_budget_mb
        device.pool = ModelPool(device.load, lambda m: device.catalog.get(m).size, budget_mb << 20)
        device.routes = Routes(settings.upstream)
        return device

    @property
    def default_models(self) -> list[str]:
        return list(self.match.profile.default_models)

    def candidates(self, model_id: str) -> list[Candidate]:
        task = self.catalog.get(model_id).task
        return list(self.match.profile.runtimes.get(task, []))

    def select(self, model_id: str) -> Selection:
        """Resolve the model in the store and run the selection; remembered for `doctor` and `status`."""
        files = self.store.resolve(model_id)
        selection = select(files, self.candidates(model_id), self.backends, self.settings.runtime.compare_candidates)
        self.selections[model_id] = selection
        self.loaded[model_id] = files.digest
        return selection

    def trial(self, files: ModelFiles) -> str | None:
        """Could this device run these files (a version not active yet, e.g. an update)? None when a candidate
        runtime loads them and passes the smoke test; otherwise every rejection. Nothing stays loaded."""
        candidates = list(self.match.profile.runtimes.get(files.task, []))  # type: ignore[call-overload]
        if not candidates:
            return f"this device's profile {self.match.profile.name} has no runtime for task {files.task!r}"
        selection = select(files, candidates, self.backends)
        try:
            return None if selection.winner is not None else selection.reason
        finally:
            selection.close()

    def load(self, model_id: str) -> Selection:
        """Loader for the pool: the winning runtime's handle, or a clear error listing every rejection."""
        selection = self.select(model_id)
        if selection.winner is None:
            raise ModelUnavailable(f"no runtime could run {model_id} on this device: {selection.reason}")
        return selection

    def hold(self, model_id: str, holds: ExitStack | None = None) -> Any:
        """Load (once) and keep a model resident while ``holds`` is open (default: the device's lifetime);
        its runtime handle."""
        return (self._held if holds is None else holds).enter_context(self.pool.use(model_id)).handle

    def refresh(self, model_id: str) -> None:
        """A new version of the model is active in the store: the next load takes it (see ``voice_stack``)."""
        self.pool.retire(model_id)
        self.selections.pop(model_id, None)

    def lease(self, model_id: str) -> Lease:
        """A model loaded now but borrowed per use: memory pressure may unload it while idle (`pool.unload_idle`),
        and the next use loads it again (a ModelUnavailable then if it no longer can be)."""
        with self.pool.use(model_id):
            return Lease(self.pool, model_id, lambda selection: selection.handle)

    def voice_stack(self) -> VoiceStack:
        """Everything provisioned that the voice core can use: ASR, VAD, voices, translators. Pinned: what a call
        needs within its first half second (the VAD, the first ASR — English-only when there is one — and the
        voices); leased, so unloadable under memory pressure: further ASR models and the translators."""
        available = [m for m in self.catalog.models if self.store.is_active(m.id)]
        holds = self._held.enter_context(ExitStack())  # this stack's pinned models: released by stack.release
        asr: dict[str, WhisperAsr] = {}
        for entry in sorted((m for m in available if m.kind == "whisper"), key=lambda m: "en" not in m.languages):
            model = Pinned(self.hold(entry.id, holds), entry.id) if not asr else self.lease(entry.id)
            asr[entry.id] = WhisperAsr(model, self.store.resolve(entry.id).file("ct2"))
        vad = next((m for m in available if m.kind == "silero-vad"), None)
        voices: dict[str, Voice] = {}
        for entry in (m for m in available if m.kind == "piper"):
            files = self.store.resolve(entry.id)
            voice = PiperVoice(self.hold(entry.id, holds), files.file("onnx", ".onnx.json"))
            voices.setdefault(voice.language, voice)
        translators: list[Translator] = []
        bergamot = [self.lease(m.id) for m in available if m.kind == "bergamot"]
        if bergamot:
            translators.append(BergamotTranslator(bergamot))
        translators.append(UpstreamTranslator(self.routes))  # serves a pair only while a route takes it
        vad_session = None
        if vad is not None:
            try:
                vad_session = self.hold(vad.id, holds)
            except ModelUnavailable as exc:  # the WebRTC VAD needs no model: degrade, say why
                log.warning("Silero VAD unavailable, using WebRTC VAD: %s", exc)
        conf = self.settings.voice
        allocator.trim()  # what loading and the smoke inferences freed
        return VoiceStack(asr, vad_session, voices, translators, vad_kind=conf.vad,
                          endpoint=EndpointOptions(hangover_ms=conf.hangover_ms, rejoin_ms=conf.rejoin_ms),
                          partial_interval_s=conf.partial_interval_s, tts_first_words=conf.tts_first_words,
                          release=holds.close, escalate=AsrEscalation(self.routes))

    def close(self) -> None:
        self._held.close()
