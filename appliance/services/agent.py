"""The update agent as a supervised service of `appliance run` (planned when ``fleet.repository`` is set), and
the hooks through which it asks the appliance to test, apply and check an update.

The agent works in a thread (TUF verification, hashing, smoke inferences are blocking); it reaches back to the
supervisor's loop only to reload the configuration and to read the services' states. Model versions it
activates are tried through the device's runtime selection before and after the switch; the voice stack of a
running process keeps the version it loaded until the next restart (said in the status notes).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from appliance.fleet.client import FleetError
from appliance.fleet.install import Hooks
from appliance.fleet.state import Job
from appliance.supervisor.service import TaskService

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.device import Device
    from appliance.fleet.agent import Agent

HEALTH_WAIT_S = 60.0


def model_health(device: Device, job: Job) -> str | None:
    """A model switch is healthy when the active version verifies and a runtime of this device runs it."""
    if job.kind != "model":
        return None
    problems = device.store.verify(job.name)
    if problems:
        return "; ".join(p.message for p in problems)
    return device.trial(device.store.resolve(job.name))


def standalone_hooks(device: Device) -> Hooks:
    """For `appliance agent poll` outside `appliance run`: nothing to reload, models checked on the device."""
    return Hooks(smoke=device.trial, health=lambda job: model_health(device, job))


class AgentTask(TaskService):
    """`appliance run`'s update agent: polls in a worker thread until the supervisor stops it."""

    def __init__(self, settings: Settings, device: Device, reload: Callable[[], Coroutine[Any, Any, dict[str, str]]],
                 services_ready: Callable[[], str | None]) -> None:
        super().__init__("agent")
        self.settings, self.device = settings, device
        self._reload, self._services_ready = reload, services_ready
        self._stop = threading.Event()
        self.agent: Agent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        from appliance.fleet.wiring import open_agent

        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        hooks = Hooks(smoke=self.device.trial, health=self._health, reload=self._reload_now, switched=self._switched)
        self.agent = await asyncio.to_thread(open_agent, self.settings, self.device.store, hooks,
                                             self.device.match.profile.name, self._stop)
        self.set_ready()
        await asyncio.to_thread(self.agent.run, self._stop)

    async def shutdown(self) -> None:
        self._stop.set()

    def _reload_now(self) -> None:
        """Run the reload path on the supervisor's loop and wait for it (called from the agent's thread)."""
        assert self._loop is not None
        actions: dict[str, str] = asyncio.run_coroutine_threadsafe(self._reload(), self._loop).result(HEALTH_WAIT_S)
        if "error" in actions:
            raise FleetError(f"the configuration reload was refused: {actions['error']}")

    def _switched(self, model_id: str) -> None:
        """The store's active version changed; this process's voice stack keeps what it loaded until restart."""
        if self.agent is None:
            return
        status = self.agent.state.status()
        note = f"model {model_id}: a new version is active in the store; running services use it after a restart"
        if note not in status.notes:
            status.notes.append(note)
            self.agent.state.save_status(status)

    def _health(self, job: Job) -> str | None:
        deadline = time.monotonic() + HEALTH_WAIT_S
        problem = self._services_ready()
        while problem is not None and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.5)
            problem = self._services_ready()
        return problem or model_health(self.device, job)

    def health(self) -> dict[str, Any]:
        if self.agent is None:
            return {}
        status = self.agent.state.status()
        return {"repository": self.settings.fleet.repository, "last_check": status.last_check,
                "last_error": status.last_error, "pending": status.pending, "notes": status.notes}
