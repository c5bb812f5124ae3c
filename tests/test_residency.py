"""Residency: lazy loading, one shared instance per model, LRU unloading of idle models under the budget."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.device import Device, ModelUnavailable
from appliance.models import ModelStore
from appliance.models.residency import ModelPool

MB = 1 << 20


class Loaded:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.made: dict[str, Loaded] = {}

    def __call__(self, model_id: str) -> Loaded:
        self.calls.append(model_id)
        time.sleep(self.delay)  # a slow load, so concurrent first users really overlap
        self.made[model_id] = Loaded(model_id)
        return self.made[model_id]


def test_lazy_and_shared_by_concurrent_users() -> None:
    loader = Loader(delay=0.2)
    pool = ModelPool(loader, lambda _: 10 * MB, budget_bytes=100 * MB)
    assert pool.resident() == [] and loader.calls == []
    seen: list[Any] = []

    def session() -> None:
        with pool.use("asr") as handle:
            seen.append(handle)

    threads = [threading.Thread(target=session) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["asr"]
    assert len({id(h) for h in seen}) == 1


def test_idle_models_are_unloaded_least_recently_used_first() -> None:
    loader = Loader()
    pool = ModelPool(loader, lambda _: 40 * MB, budget_bytes=100 * MB)
    for model_id in ("a", "b"):
        with pool.use(model_id):
            pass
    with pool.use("a"):  # a is now more recently used than b
        pass
    with pool.use("c"):
        pass
    assert pool.resident() == ["a", "c"]
    assert loader.made["b"].closed and not loader.made["a"].closed
    assert pool.unloads == 1 and pool.resident_bytes == 80 * MB


def test_a_model_in_use_is_never_unloaded(caplog: pytest.LogCaptureFixture) -> None:
    loader = Loader()
    pool = ModelPool(loader, lambda _: 60 * MB, budget_bytes=100 * MB)
    with pool.use("a"), pool.use("b"):
        assert pool.resident() == ["a", "b"]
        assert not loader.made["a"].closed
    assert "budget exceeded" in caplog.text
    assert pool.unload_idle() == ["a", "b"]
    assert pool.resident() == []


def test_failed_load_is_not_cached_and_does_not_block_others() -> None:
    attempts = []

    def flaky(model_id: str) -> Loaded:
        attempts.append(model_id)
        if len(attempts) == 1:
            raise RuntimeError("runtime failed to load")
        return Loaded(model_id)

    pool = ModelPool(flaky, lambda _: MB, budget_bytes=10 * MB)
    with pytest.raises(RuntimeError), pool.use("a"):
        pass
    with pool.use("a") as handle:
        assert handle.model_id == "a"


def test_device_pool_loads_real_models_once(store: ModelStore, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("APPLIANCE_MODELS__STORE", str(store.root))
    device = Device.open(load_settings())
    assert device.match.profile.name in ("generic-x86_64", "generic-aarch64", "generic-cpu")
    with device.pool.use("silero-vad-v6") as first, device.pool.use("silero-vad-v6") as second:
        assert first is second and first.winner == "onnxruntime:cpu"
    assert device.pool.loads == 1


def test_model_no_runtime_can_run_is_a_clear_error(store: ModelStore, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "npu-only.yaml").write_text(
        "name: npu-only\ndescription: x\npriority: 1\nmatch: {}\nthreads: 1\nmemory_budget_mb: 100\n"
        "runtimes: {asr: [ctranslate2:cuda], tts: [openvino:NPU], vad: [openvino:NPU], mt: [ctranslate2:cuda],"
        " speaker: [openvino:NPU]}\ndefault_models: [silero-vad-v6]\n"
    )
    monkeypatch.setenv("APPLIANCE_MODELS__STORE", str(store.root))
    monkeypatch.setenv("APPLIANCE_HW__PROFILES_DIR", str(profiles))
    device = Device.open(load_settings())
    with pytest.raises(ModelUnavailable, match="no runtime could run silero-vad-v6.*OpenVINO sees no NPU"), \
            device.pool.use("silero-vad-v6"):
        pass


def test_voice_settings_reach_the_voice_stack(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.voice.vad import WebRtcVad

    monkeypatch.setenv("APPLIANCE_MODELS__STORE", str(store.root))
    monkeypatch.setenv("APPLIANCE_VOICE__VAD", "webrtc")
    monkeypatch.setenv("APPLIANCE_VOICE__HANGOVER_MS", "150")
    monkeypatch.setenv("APPLIANCE_VOICE__TTS_FIRST_WORDS", "5")
    device = Device.open(load_settings())
    try:
        stack = device.voice_stack()
        assert isinstance(stack.new_vad(), WebRtcVad)
        assert stack.endpoint.hangover_ms == 150
        assert stack.tts("en").first_words == 5
    finally:
        device.close()


def test_a_lease_borrows_per_use_and_comes_back_after_an_unload() -> None:
    from appliance.models.residency import Lease, Pinned

    loader = Loader()
    pool = ModelPool(loader, lambda m: 10 * MB, 100 * MB)
    lease = Lease(pool, "whisper")
    with lease.use() as first:
        assert pool.unload_idle() == []  # in use: kept
    assert pool.unload_idle() == ["whisper"] and first.closed
    with lease.use() as second:
        assert second is not first and not second.closed
    assert loader.calls == ["whisper", "whisper"]
    pinned = Pinned(first)
    with pinned.use() as handle:
        assert handle is first


def test_memory_pressure_unloads_the_leased_models_and_the_next_use_loads_them_again(device: Device) -> None:
    """The device's stack pins what a call needs at once (VAD, the English ASR, the voice) and leases the rest:
    unload_idle (the memory guard's shed) drops the multilingual Whisper and the translators, not the pinned
    ones; an interpretation after that still works, loading them again."""
    from appliance.bench.text import normalise

    stack = device.voice_stack()
    before = set(device.pool.resident())
    dropped = set(device.pool.unload_idle())
    pinned = {"whisper-tiny-en", "silero-vad-v6", "piper-en-us-joe-medium"}
    assert {"whisper-base", "bergamot-en-pt", "bergamot-pt-en"} <= dropped <= before, (dropped, before)
    assert pinned <= set(device.pool.resident()) and not pinned & dropped
    loads = device.pool.loads
    translator = stack.router().route("pt", "en")
    assert "password" in normalise(translator.translate("Digite sua senha.", "pt", "en"))
    assert device.pool.loads == loads + 1 and "bergamot-pt-en" in device.pool.resident()


def test_the_allocator_is_tuned_without_overriding_the_operator_and_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.runtime import allocator

    monkeypatch.setenv("MKL_DISABLE_FAST_MM", "0")  # the operator's choice
    monkeypatch.delenv("MIMALLOC_ALLOW_THP", raising=False)
    allocator.tune()
    assert os.environ["MKL_DISABLE_FAST_MM"] == "0" and os.environ["MIMALLOC_ALLOW_THP"] == "0"
    def rss_mib() -> float:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    # 80 MiB in 4 KiB blocks: glibc's heap (below its mmap threshold), kept by malloc after free
    garbage = [bytearray(4096) for _ in range(20_000)]
    garbage.append(bytearray(4096))  # a live block at the top: only a trim, not free(), can release what is below
    before = rss_mib()
    del garbage[:-1]
    assert allocator.trim() is True
    assert rss_mib() < before - 40, (before, rss_mib())
