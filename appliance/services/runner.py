"""The whole appliance under the supervisor — what `appliance run` (and the systemd unit) runs.

Reads the configuration, opens the device (hardware probe, profile, store), warms the models in the
background, and supervises the services of the plan (API with kiosk and WebRTC, SIP, Wyoming). The status
(every service's state, the models, memory) goes to systemd (READY=1, STATUS=, WATCHDOG=1), to ``GET /health``
under "supervisor", and to ``STATE_DIR/status.json`` for `appliance status`. SIGTERM drains, SIGHUP reloads
the same configuration file, memory pressure sheds load.

This is a composition root like ``appliance.device``: it wires the layers below; only the CLI imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.services.agent import AgentTask
from appliance.services.api import ApiService
from appliance.services.plan import AGENT, API, SIP, WYOMING, needs_process_restart, plan
from appliance.services.sip import SipTask
from appliance.services.wyoming import WyomingTask
from appliance.supervisor.activation import Activation
from appliance.supervisor.graph import GraphError, ServiceSpec
from appliance.supervisor.journal import journal_handler
from appliance.supervisor.lifecycle import serve
from appliance.supervisor.memory import MemoryGuard, MemoryOptions
from appliance.supervisor.notify import Notifier
from appliance.supervisor.service import Service
from appliance.supervisor.supervisor import Supervisor, SupervisorOptions
from appliance.voice.readiness import WARM_THREAD

if TYPE_CHECKING:
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore
    from appliance.config import Settings
    from appliance.device import Device
    from appliance.voice.readiness import VoiceModels

log = logging.getLogger(__name__)
TRIM_EVERY_S = 30.0
WARM_AFTER_S = 2.0  # the models start loading at READY=1, or this long after the start at the latest


@dataclass
class ApplianceGraph:
    """The supervisor's factory of the real services; everything they share is built once, here."""

    models: VoiceModels
    services: ApiServices
    only: Collection[str] | None = None  # `appliance run --only`: exactly these services
    supervisor: Supervisor | None = None
    device: Device | None = None  # for the update agent: its store and runtimes
    activation: Activation = field(default_factory=Activation)  # the sockets systemd passed, if any
    reload: Callable[[], Coroutine[Any, Any, dict[str, str]]] | None = None  # the SIGHUP path, for the agent

    def plan(self, settings: Settings) -> list[ServiceSpec]:
        return plan(settings, self.only)

    def make(self, spec: ServiceSpec, settings: Settings) -> Service:
        if spec.name == API:
            return ApiService(settings, self.services, self.activation)
        if spec.name == SIP:
            return SipTask(settings, self.services, self.activation)
        if spec.name == WYOMING:
            return WyomingTask(settings, self.models, self.activation)
        if spec.name == AGENT and self.device is not None and self.reload is not None:
            live = self.supervisor.live if self.supervisor is not None else (lambda: 0)
            return AgentTask(settings, self.device, self.models, self.reload, self.services_ready, live)
        raise GraphError(f"no service called {spec.name!r}")

    def status(self) -> dict[str, Any]:
        return self.supervisor.status() if self.supervisor is not None else {}

    def services_ready(self) -> str | None:
        """None when every service but the agent is ready; else which are not (the agent's health check)."""
        services = self.status().get("services", {})
        waiting = [f"{n} {s.get('state')}" for n, s in services.items() if n != AGENT and not s.get("ready")]
        return f"not ready: {', '.join(waiting)}" if waiting else None


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
              options: SupervisorOptions | None = None, notifier: Notifier | None = None,
              only: Collection[str] | None = None) -> int:
    """Run until SIGTERM (0) or until every service failed (1). ``state_dir`` (`data_root()`: systemd's
    $STATE_DIRECTORY in the unit) holds status.json and, unless api.keys_file says otherwise, the API keys.
    ``only`` names the services to run (default: those the settings enable). The cyclic garbage collector is
    paused until the services listen (see appliance.cli.entry), and on again whatever happens."""
    gc.disable()
    try:
        return await _run(settings_path, state_dir, keys, options, notifier, only)
    finally:
        gc.enable()


async def _run(settings_path: Path | None, state_dir: Path, keys: KeyStore | None, options: SupervisorOptions | None,
               notifier: Notifier | None, only: Collection[str] | None) -> int:
    from appliance.api.context import ApiServices
    from appliance.api.keys import KeyStore
    from appliance.config import load_settings
    from appliance.device import Device
    from appliance.runtime import allocator
    from appliance.voice.readiness import VoiceModels

    activation = Activation.from_environ()  # first: the environment is cleared for children
    settings = await asyncio.to_thread(load_settings, settings_path)
    setup_logging(settings.log.level)
    device = await asyncio.to_thread(Device.open, settings)
    models = VoiceModels(device.voice_stack)
    keys = keys or KeyStore(settings.api.keys_file or state_dir / "api-keys.json")
    provisioned = [m.id for m in device.catalog.models if device.store.is_active(m.id)]
    services = ApiServices(settings.api, keys, models, lambda: provisioned, standalone=False, routes=device.routes)
    services.registry.register(device.routes.registry)  # a registry is a collector too
    graph = ApplianceGraph(models, services, only, device=device, activation=activation)
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
        device.routes.configure(new.upstream)  # live: the next call, turn or translation takes the new routes
        return new

    async def reload_now() -> dict[str, str]:  # what SIGHUP does, for the update agent's config bundles
        try:
            new = await asyncio.to_thread(reload)
        except Exception as exc:
            return {"error": str(exc)}
        return await supervisor.reload(new)

    graph.reload = reload_now

    async def announce() -> None:
        await supervisor.ready.wait()
        print(where(supervisor.status(), settings), flush=True)
        if activation.unused():
            log.warning("systemd passed sockets that no service listens on: %s (appliance.socket and the settings "
                        "disagree)", ", ".join(activation.unused()))

    async def trim() -> None:  # hand what calls and sessions freed back to the kernel
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            await asyncio.to_thread(allocator.trim)

    async def warm() -> None:
        """Once every service listens (the loading thread's imports hold the GIL and would delay READY=1), or
        after WARM_AFTER_S if a service is slow to come up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_AFTER_S):
                await supervisor.ready.wait()
        gc.enable()  # paused by run()
        await models.warm()

    background = [asyncio.create_task(warm(), name="models-warm"), asyncio.create_task(announce()),
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


def exit_now(code: int) -> None:
    """Exit at once if the models are still loading: the interpreter's normal teardown would run while a
    runtime initialises in the loading thread, and ONNX Runtime aborts then (SIGABRT, a core dump under
    systemd). Everything of ours has been stopped and flushed by now; logs are flushed here."""
    if any(t.name == WARM_THREAD and t.is_alive() for t in threading.enumerate()):  # VoiceModels' loader
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
