"""`appliance upstream …`: the datacenter tier a site runs on its own server — an OpenAI-compatible gateway in
front of its chat models (llama.cpp servers), with API keys and quotas — and its keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from appliance.cli.serve_cmd import console, print_keys, print_new_key, print_revoked
from appliance.cli.state import CliState
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore

app = typer.Typer(help="The upstream datacenter tier (`serve`) and its API keys.", no_args_is_help=True)
key_app = typer.Typer(help="Create, list and revoke the upstream tier's API keys (stored hashed).",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")


def _state_dir(state: CliState) -> Path:
    from appliance.config.paths import data_root

    return state.settings.upstream_tier.state_dir or data_root() / "upstream"


def _keys(ctx: typer.Context) -> KeyStore:
    from appliance.api.keys import KeyStore

    return KeyStore(_state_dir(ctx.obj) / "api-keys.json")


def chat_models(state: CliState) -> dict[str, Path]:
    """The configured chat models' GGUF files in the model store (catalog id -> file)."""
    from appliance.models import ModelStore, default_store_path, load_catalog

    settings = state.settings
    catalog, store = load_catalog(settings.models.catalog), ModelStore(settings.models.store or default_store_path())
    found = {}
    for model_id in settings.upstream_tier.models:
        entry = catalog.get(model_id)
        if entry.task != "llm":
            raise ApplianceError(f"upstream_tier.models: {model_id} is a {entry.task} model, not a chat model")
        tree = store.active_tree(model_id)
        if tree is None:
            raise ApplianceError(f"model {model_id} is not in the store {store.root}; fix: appliance models pull "
                                 f"{model_id}")
        found[model_id] = tree / "gguf" / "model.gguf"
    if not found:
        raise ApplianceError("upstream_tier.models is empty: name at least one chat model")
    return found


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the tier (upstream_tier.host:port): each chat model in a llama.cpp server of its own, behind one
    OpenAI-compatible API with keys, quotas and Prometheus metrics."""
    import contextlib

    import uvicorn

    from appliance.upstream.gateway import Gateway, Quota, make_app
    from appliance.upstream.llama import LlamaServer

    state: CliState = ctx.obj
    conf = state.settings.upstream_tier
    logs = _state_dir(state) / "logs"
    keys = _keys(ctx)
    if not keys.list():
        console.print(f"no API key yet: make one with `appliance upstream key create NAME` (kept in {keys.path})")
    with contextlib.ExitStack() as stack:
        backends = {}
        for name, path in chat_models(state).items():
            console.print(f"starting {name} (llama.cpp, {conf.threads} threads, context {conf.context})")
            backends[name] = stack.enter_context(LlamaServer(path, logs / f"{name}.log", conf.threads, conf.context,
                                                             conf.parallel))
        gateway = Gateway(backends, keys, Quota(conf.rate_per_minute, conf.tokens_per_day), audio=_audio(state, keys))
        console.print(f"upstream tier at http://{conf.host}:{conf.port}/v1 serving {', '.join(backends)}")
        uvicorn.run(make_app(gateway), host=conf.host, port=conf.port, log_level="warning",
                    timeout_graceful_shutdown=10)


def _audio(state: CliState, keys: KeyStore) -> ApiServices | None:
    """The tier's voice stack (the store's Whisper, Piper and translation models, as on a device), for the audio
    routes; None when upstream_tier.audio is off."""
    if not state.settings.upstream_tier.audio:
        return None
    from appliance.api.context import ApiServices
    from appliance.config.settings import ApiSettings
    from appliance.voice.readiness import VoiceModels

    device = state.device
    provisioned = [m.id for m in device.catalog.models if device.store.is_active(m.id)]
    return ApiServices(ApiSettings(rate_per_minute=state.settings.upstream_tier.rate_per_minute), keys,
                       VoiceModels(device.voice_stack), lambda: provisioned)


@key_app.command("create")
def create(ctx: typer.Context, name: str = typer.Argument(..., help="Who or what the key is for (a site, a fleet).")
           ) -> None:
    """Create a key and print it once; only its hash is kept."""
    print_new_key(_keys(ctx), name)


@key_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Every key: id, name, created, revoked (never the key itself)."""
    print_keys(_keys(ctx))


@key_app.command("revoke")
def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id (see key list).")) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    print_revoked(_keys(ctx), key_id)
