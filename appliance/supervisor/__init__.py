"""The supervisor: runs the appliance's services (in-process tasks and child processes) in dependency order,
restarts them with backoff, reports readiness and health to systemd, drains on SIGTERM, reloads on SIGHUP and
sheds load under memory pressure. `appliance.services.run` is what `appliance run` runs."""

from appliance.supervisor.graph import GraphError, ServiceSpec, start_order
from appliance.supervisor.lifecycle import serve
from appliance.supervisor.memory import MemoryGuard, MemoryOptions
from appliance.supervisor.notify import Notifier
from appliance.supervisor.service import ProcessService, RestartPolicy, Service, ServiceState, TaskService
from appliance.supervisor.supervisor import Supervisor, SupervisorOptions

__all__ = [
    "GraphError",
    "MemoryGuard",
    "MemoryOptions",
    "Notifier",
    "ProcessService",
    "RestartPolicy",
    "Service",
    "ServiceSpec",
    "ServiceState",
    "Supervisor",
    "SupervisorOptions",
    "TaskService",
    "serve",
    "start_order",
]
