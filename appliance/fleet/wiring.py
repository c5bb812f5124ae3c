"""Building the agent from the settings: the trusted root, the state directory, one HTTP client with timeouts,
the installer, the schedule and, once the device is enrolled at a console (``fleet/console.json``), the link to
it. The caller passes what only the running appliance knows (its hooks, tags and the facts it reports)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from appliance import __version__
from appliance.config.paths import data_root
from appliance.fleet.agent import Agent, DeviceFacts, Schedule
from appliance.fleet.client import FleetError, TufClient
from appliance.fleet.enrolment import ConsoleLink, enrolled
from appliance.fleet.events import EventLog
from appliance.fleet.identity import load_or_make
from appliance.fleet.install import Hooks, Installer
from appliance.fleet.state import AgentState
from appliance.fleet.telemetry import Outbox, Sampler
from appliance.models import ModelStore

if TYPE_CHECKING:
    from appliance.config import Settings


def state_dir(settings: Settings) -> Path:
    return settings.fleet.state_dir or data_root() / "fleet"


def open_agent(settings: Settings, store: ModelStore, hooks: Hooks, profile: str,
               stop: threading.Event | None = None, facts: Callable[[], dict[str, Any]] | None = None) -> Agent:
    conf = settings.fleet
    if not conf.repository or conf.root is None:
        raise FleetError("no update repository configured; fix: set fleet.repository and fleet.root")
    try:
        trusted = conf.root.read_bytes()
    except OSError as exc:
        raise FleetError(f"fleet.root {conf.root}: cannot read the trusted root ({exc.strerror})") from None
    folder = state_dir(settings)
    client = TufClient(conf.repository, folder / "metadata", trusted, user_agent=f"appliance/{__version__}")
    http = httpx.Client(timeout=conf.timeout_s, follow_redirects=True,
                        headers={"User-Agent": f"appliance/{__version__}"})
    state, events = AgentState(folder), EventLog(folder / "events.jsonl")
    installer = Installer(store, client, http, state, events, hooks, folder / "config.toml",
                          stop or threading.Event())
    device = DeviceFacts(__version__, frozenset({profile, *conf.tags}), dict(conf.pins), conf.config, conf.board)
    console = enrolled(folder)
    link = None
    if console is not None:
        link = ConsoleLink(str(console["url"]), load_or_make(data_root()), http,
                           facts or (lambda: {"profile": profile, "version": __version__}),
                           Outbox(folder / "outbox", conf.telemetry_max_bytes), Sampler(), conf.share_transcripts)
    return Agent(client, installer, state, events, device, Schedule(conf.interval_s, conf.jitter, conf.backoff_max_s),
                 link)
