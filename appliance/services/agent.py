"""The update agent as a supervised service of `appliance run` (planned when ``fleet.repository`` is set), and
the hooks through which it asks the appliance to test, apply and check an update.

The agent works in a thread (TUF verification, hashing, smoke inferences are blocking); it reaches back to the
supervisor's loop to reload the configuration, to swap the voice stack after a model switch, and to read the
services' states. Model versions it activates are tried through the device's runtime selection before the
switch; after it, the check asks that every service is ready, that the running stack loaded the new version,
and that it verifies and runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.supervisor.service import TaskService

if TYPE_CHECKING:  # the fleet (python-tuf and its crypto) loads with the agent, not on every start of the appliance
    from appliance.config import Settings
    from appliance.device import Device
    from appliance.fleet.agent import Agent
    from appliance.fleet.install import Hooks, SlotWriter
    from appliance.fleet.state import Job
    from appliance.voice.readiness import VoiceModels
    from appliance.voice.stack import VoiceStack

log = logging.getLogger(__name__)
HEALTH_WAIT_S = 60.0


def model_health(device: Device, job: Job) -> str | None:
    """A model switch is healthy when the active version verifies and a runtime of this device runs it."""
    if job.kind != "model":
        return None
    problems = device.store.verify(job.name)
    if problems:
        return "; ".join(p.message for p in problems)
    return device.trial(device.store.resolve(job.name))


def slot_writer() -> SlotWriter | None:
    """Firmware goes to the A/B slot not booted when this device runs from an appliance image; elsewhere it is
    only staged (None)."""
    from appliance.image.firmware import FirmwareError, install, open_running

    try:
        system = open_running()
    except (FirmwareError, OSError):
        return None

    def write(bundle: Path, custom: dict[str, Any]) -> None:
        entry = install(system, bundle)
        log.warning("firmware generation %d written to slot %s: it is tried at the next boot", entry.generation,
                    entry.slot)

    return write


def inventory_facts(device: Device, health: str | None, calls: int) -> dict[str, Any]:
    """What the console's inventory shows of this device, sent with each report (no personal data): profile,
    version, slot, health (None: not known here, left out), live calls, the models loaded and the runtime each
    runs on, and the hardware."""
    from appliance import __version__
    from appliance.image.firmware import booted_slot

    hardware = device.report.model_dump(mode="json", exclude={"pci"})
    facts = {"profile": device.match.profile.name, "version": __version__, "health": health, "calls": calls,
             "slot": booted_slot(), "models": dict(device.loaded),
             "runtimes": {m: s.winner for m, s in device.selections.items()}, "hardware": hardware}
    return {k: v for k, v in facts.items() if not (k == "health" and v is None)}


def standalone_hooks(device: Device) -> Hooks:
    """For `appliance agent poll` outside `appliance run`: nothing to reload, models checked on the device."""
    from appliance.fleet.install import Hooks

    return Hooks(smoke=device.trial, health=lambda job: model_health(device, job), slot_writer=slot_writer())


class AgentTask(TaskService):
    """`appliance run`'s update agent: polls in a worker thread until the supervisor stops it. A model switch
    rebuilds the voice stack beside the one serving (sessions keep the stack they began with); the old stack
    is stopped and let go once no call or session is live."""

    def __init__(self, settings: Settings, device: Device, models: VoiceModels,
                 reload: Callable[[], Coroutine[Any, Any, dict[str, str]]], services_ready: Callable[[], str | None],
                 live: Callable[[], int]) -> None:
        super().__init__("agent")
        self.settings, self.device, self.models = settings, device, models
        self._reload, self._services_ready, self._live = reload, services_ready, live
        self._stop = threading.Event()
        self.agent: Agent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._swap_error: str | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        from appliance.fleet.install import Hooks
        from appliance.fleet.wiring import open_agent

        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        hooks = Hooks(smoke=self.device.trial, health=self._health, reload=self._reload_now, switched=self._switched,
                      slot_writer=slot_writer())
        self.agent = await asyncio.to_thread(open_agent, self.settings, self.device.store, hooks,
                                             self.device.match.profile.name, self._stop, self._facts)
        self.set_ready()
        try:
            await asyncio.to_thread(self.agent.run, self._stop)
        finally:
            for task in self._retiring:
                task.cancel()
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def shutdown(self) -> None:
        self._stop.set()

    def _reload_now(self) -> None:
        """Run the reload path on the supervisor's loop and wait for it (called from the agent's thread)."""
        assert self._loop is not None
        actions: dict[str, str] = asyncio.run_coroutine_threadsafe(self._reload(), self._loop).result(HEALTH_WAIT_S)
        if "error" in actions:
            from appliance.fleet.client import FleetError

            raise FleetError(f"the configuration reload was refused: {actions['error']}")

    def _switched(self, model_id: str) -> None:
        """The store's active version of ``model_id`` changed: load it into a new voice stack now (from the
        agent's thread; the swap itself runs on the supervisor's loop)."""
        assert self._loop is not None
        self._swap_error = None
        try:
            asyncio.run_coroutine_threadsafe(self._swap(model_id), self._loop).result(HEALTH_WAIT_S * 5)
        except Exception as exc:  # the check step reports it and the agent rolls back
            self._swap_error = f"the voice stack could not load the new version: {exc}"

    async def _swap(self, model_id: str) -> None:
        self.device.refresh(model_id)
        if self.models.current() is None:  # still warming (or failed): the first build loads the new version
            return
        old = await self.models.swap(self.device.voice_stack)
        log.info("voice stack rebuilt with %s %s; the previous one retires when nothing is live", model_id,
                 self.device.loaded.get(model_id))
        if old is not None:
            task = asyncio.create_task(self._retire(old), name="voice-stack-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: VoiceStack) -> None:
        """Stop the replaced stack once nothing live can be using it, and let its models go."""
        while self._live() > 0:
            await asyncio.sleep(1.0)
        await old.stop()
        old.release()

    def _health(self, job: Job) -> str | None:
        deadline = time.monotonic() + HEALTH_WAIT_S
        problem = self._swap_error or self._services_ready()
        while problem is not None and not self._swap_error and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.5)
            problem = self._services_ready()
        if problem is None and job.kind == "model" and self.models.current() is not None:
            active, loaded = self.device.store.active_digest(job.name), self.device.loaded.get(job.name)
            if loaded is not None and loaded != active:
                problem = f"the running voice stack uses version {loaded}, not {active}"
        return problem or model_health(self.device, job)

    def _facts(self) -> dict[str, Any]:
        return inventory_facts(self.device, self._services_ready() or "ok", self._live())

    def health(self) -> dict[str, Any]:
        if self.agent is None:
            return {}
        status = self.agent.state.status()
        return {"repository": self.settings.fleet.repository, "last_check": status.last_check,
                "last_error": status.last_error, "pending": status.pending, "notes": status.notes,
                "models_loaded": dict(self.device.loaded)}
