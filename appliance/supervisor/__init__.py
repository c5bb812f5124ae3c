"""The supervisor: runs the appliance's services (in-process tasks and child processes) in dependency order,
restarts them with backoff, reports readiness and health to systemd, drains on SIGTERM, reloads on SIGHUP and
sheds load under memory pressure. `appliance.cli.run_cmd.run` is the entry point of `appliance run`."""

from appliance.supervisor.graph import GraphError, ServiceSpec, plan, start_order
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
    "plan",
    "serve",
    "start_order",
]
