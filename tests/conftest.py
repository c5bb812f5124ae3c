"""Shared fixtures: a model store provisioned from the real packages once per session, and a clean env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bench.corpus import Prompt, load_prompts
from appliance.device import Device
from appliance.models import Catalog, ModelStore, load_catalog
from appliance.runtime import Backend, BackendContext, make_backends
from appliance.voice.stack import VoiceStack
from tests.support.openai_peer import OpenAiPeer
from tests.support.supervision import Listener

ROOT = Path(__file__).resolve().parents[1]
CONVERTER_PYTHON = ROOT / ".venv-convert" / "bin" / "python"
FIXTURES = Path(__file__).parent / "fixtures"
HW_FIXTURES = FIXTURES / "hw"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No APPLIANCE_* variable leaks in, and the machine's /etc/appliance/appliance.toml is never read."""
    for name in list(os.environ):
        if name.startswith("APPLIANCE_"):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "empty-appliance.toml"
    empty.touch()
    monkeypatch.setenv("APPLIANCE_CONFIG", str(empty))


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> ModelStore:
    """Every catalog model, copied from its installed package and verified: the real weights."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    for entry in catalog.models:
        store.pull(entry)
    return store


@pytest.fixture(scope="session")
def backends(store: ModelStore) -> dict[str, Backend]:
    return make_backends(BackendContext(threads=2, cache=store.put_derived))


@pytest.fixture(scope="session")
def tflite_store(store: ModelStore, catalog: Catalog) -> ModelStore:
    """The store with the derived TFLite variant built by the real converter (onnx2tf) from the real ONNX."""
    if not CONVERTER_PYTHON.exists():
        message = f"{CONVERTER_PYTHON} missing: `make test` builds it (make converter)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from appliance.models.convert import build_derived

    build_derived(store, catalog.get("silero-vad-v6"), CONVERTER_PYTHON)
    return store


@pytest.fixture(scope="session")
def device(store: ModelStore, catalog: Catalog) -> Iterator[Device]:
    """The wired device on this machine, using the session's store (every catalog model provisioned)."""
    from appliance.config import Settings

    dev = Device.open(Settings(models={"store": store.root}))  # type: ignore[arg-type]
    yield dev
    dev.close()


@pytest.fixture(scope="session")
def stack(device: Device) -> VoiceStack:
    return device.voice_stack()


@pytest.fixture(scope="session")
def prompts_en() -> list[Prompt]:
    return load_prompts("en", 12)


@pytest.fixture(scope="session")
def prompts_es() -> list[Prompt]:
    return load_prompts("es", 6)


@pytest.fixture
def listener() -> Iterator[Listener]:
    """systemd's side of a notify socket (abstract), for the supervisor's tests."""
    lst = Listener(abstract=True)
    yield lst
    lst.close()


@pytest.fixture
def peer() -> Iterator[OpenAiPeer]:
    """A small OpenAI-compatible chat server on loopback that answers, stalls or fails (tests set which)."""
    server = OpenAiPeer()
    yield server
    server.close()
