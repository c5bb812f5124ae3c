"""`appliance run`: the whole appliance under the supervisor — what `make run` and the systemd unit start.

Reads the configuration, opens the device (hardware probe, profile, store), warms the models in the
background, and supervises the services the settings enable (API with kiosk and WebRTC, SIP, Wyoming). The
status (every service's state, the models, memory) goes to systemd (READY=1, STATUS=, WATCHDOG=1), to
``GET /health`` under "supervisor", and to ``STATE_DIR/status.json`` for `appliance status`. SIGTERM drains,
SIGHUP reloads the same configuration file, memory pressure sheds load.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from appliance.cli.services import ApiService, SipTask, WyomingTask, exit_now
from appliance.cli.state import CliState
from appliance.supervisor.graph import API, SIP, WYOMING, GraphError, ServiceSpec, needs_process_restart, plan
from appliance.supervisor.journal import journal_handler
from appliance.supervisor.lifecycle import serve
from appliance.supervisor.memory import MemoryGuard, MemoryOptions
from appliance.supervisor.notify import Notifier
from appliance.supervisor.service import Service
from appliance.supervisor.supervisor import Supervisor, SupervisorOptions

if TYPE_CHECKING:
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore
    from appliance.config import Settings
    from appliance.voice.readiness import VoiceModels

log = logging.getLogger(__name__)
DEFAULT_GRACE_S = 20.0
TRIM_EVERY_S = 30.0


@dataclass
class ApplianceGraph:
    """The supervisor's factory of the real services; everything they share is built once, here."""

    models: VoiceModels
    services: ApiServices
    supervisor: Supervisor | None = None

    def plan(self, settings: Settings) -> list[ServiceSpec]:
        return plan(settings)

    def make(self, spec: ServiceSpec, settings: Settings) -> Service:
        if spec.name == API:
            return ApiService(settings, self.services)
        if spec.name == SIP:
            return SipTask(settings, self.services)
        if spec.name == WYOMING:
            return WyomingTask(settings, self.models)
        raise GraphError(f"no service called {spec.name!r}")

    def status(self) -> dict[str, Any]:
        return self.supervisor.status() if self.supervisor is not None else {}


def where(status: dict[str, Any], settings: Settings) -> str:
    """Where each running service listens, for people: printed once the appliance is READY."""
    services = status.get("services", {})
    lines = []
    api = services.get("api", {}).get("listen")
    if api:
        address = _shown(api)
        lines += [f"kiosk page   http://{address}/kiosk", f"HTTP API     http://{address}/v1/… "
                  "(Bearer API key; GET /health is open)"]
    if services.get("sip", {}).get("listen"):
        lines.append(f"SIP          sip:<number>@{_shown(services['sip']['listen'])} (UDP and TCP), RTP "
                     f"{settings.sip.rtp_port_min}-{settings.sip.rtp_port_max}/udp")
    if "wyoming" in services:
        lines.append(f"Wyoming      {settings.wyoming.stt_uri} (speech-to-text), {settings.wyoming.tts_uri} "
                     "(text-to-speech)")
    failed = [name for name, unit in services.items() if unit.get("state") == "failed"]
    if failed:
        lines.append(f"failed       {', '.join(failed)} (see the log; `appliance status`)")
    return "\n".join(["the appliance is ready (models warm in the background):", *(f"  {line}" for line in lines)])


def _shown(listen: str) -> str:
    """host:port, with a wildcard address shown as the device (it answers on every address it has)."""
    host, _, port = listen.rpartition(":")
    return f"{host if host not in ('0.0.0.0', '::', '[::]', '') else '<this device>'}:{port}"


def setup_logging(level: str) -> None:
    """The journal (structured fields) when stderr goes to it, else stderr as configured by the CLI."""
    root = logging.getLogger()
    handler = journal_handler()
    if handler is not None:
        root.handlers = [handler]
    elif not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(level.upper())


async def run(settings_path: Path | None, state_dir: Path, keys: KeyStore | None = None,
              options: SupervisorOptions | None = None, notifier: Notifier | None = None) -> int:
    """Run until SIGTERM (0) or until every service failed (1). ``state_dir`` (`data_root()`: systemd's
    $STATE_DIRECTORY in the unit) holds status.json and, unless api.keys_file says otherwise, the API keys."""
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore
    from appliance.config import load_settings
    from appliance.device import Device
    from appliance.runtime import allocator
    from appliance.voice.readiness import VoiceModels

    settings = await asyncio.to_thread(load_settings, settings_path)
    setup_logging(settings.log.level)
    device = await asyncio.to_thread(Device.open, settings)
    models = VoiceModels(device.voice_stack)
    keys = keys or KeyStore(settings.api.keys_file or state_dir / "api-keys.json")
    provisioned = [m.id for m in device.catalog.models if device.store.is_active(m.id)]
    services = ApiServices(settings.api, keys, models, lambda: provisioned, standalone=False)
    graph = ApplianceGraph(models, services)
    services.supervisor = graph.status
    guard = MemoryGuard(MemoryOptions(), shed=lambda reason: None, recover=lambda: None)

    def extras() -> dict[str, Any]:
        notes = [models.note()] + ([f"memory pressure: {guard.reason}"] if guard.shedding else [])
        return {"models": models.note(), "memory": guard.status(), "notes": notes}

    options = options or SupervisorOptions(grace_s=settings.supervisor.grace_s,
                                           status_file=state_dir / "status.json")
    supervisor = graph.supervisor = Supervisor(graph, settings, options, notifier, extras)

    async def shed(reason: str) -> None:
        supervisor.refuse("memory", True)
        dropped = await asyncio.to_thread(device.pool.unload_idle)
        await asyncio.to_thread(allocator.trim)
        log.warning("memory pressure (%s): new calls refused, idle models unloaded: %s", reason,
                    ", ".join(dropped) or "none idle")

    guard.shed, guard.recover = shed, lambda: supervisor.refuse("memory", False)
    current = [settings]

    def reload() -> Settings:
        new = load_settings(settings_path)
        logging.getLogger().setLevel(new.log.level.upper())
        later = needs_process_restart(current[0], new)
        if later:
            log.warning("changed %s: takes effect after a restart (systemctl restart appliance)", ", ".join(later))
        current[0] = new
        return new

    async def announce() -> None:
        await supervisor.ready.wait()
        print(where(supervisor.status(), settings), flush=True)

    async def trim() -> None:  # hand what calls and sessions freed back to the kernel
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            await asyncio.to_thread(allocator.trim)

    background = [asyncio.create_task(models.warm(), name="models-warm"), asyncio.create_task(announce()),
                  asyncio.create_task(trim(), name="memory-trim")]
    if settings.supervisor.memory_guard:
        background.append(asyncio.create_task(guard.run(), name="memory-guard"))
    try:
        return await serve(supervisor, reload)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        stack = models.current()
        if stack is not None:
            await stack.stop()
        await asyncio.to_thread(device.close)


def run_command(ctx: typer.Context) -> None:
    """Run every enabled service (API with kiosk and WebRTC, SIP, Wyoming) under the supervisor until SIGTERM;
    SIGHUP reloads the configuration. What `make run` and the systemd unit start."""
    from appliance.cli.serve_cmd import first_key, key_store
    from appliance.config.paths import data_root

    state: CliState = ctx.obj
    keys = key_store(state.settings)
    first_key(keys)
    code = asyncio.run(run(state.config_path, data_root(), keys=keys))
    exit_now(code)
    raise typer.Exit(code)
