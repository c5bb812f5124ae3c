"""The appliance's own services and their wiring: which run (`plan`), how each runs under the supervisor (the
API, the phone, the Wyoming servers, each a module), and `run`, the whole appliance in one process on one copy
of the models. The update agent, the console and the upstream server join as one more entry each."""

from appliance.services.plan import API, SERVICES, SIP, WYOMING, needs_process_restart, plan
from appliance.services.runner import ApplianceGraph, exit_now, run, where

__all__ = ["API", "SERVICES", "SIP", "WYOMING", "ApplianceGraph", "exit_now", "needs_process_restart", "plan", "run",
           "where"]
