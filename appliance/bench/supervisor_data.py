"""What `appliance bench supervisor` is asked (its options) and what it finds (boots, kills, the result)."""

from __future__ import annotations

from dataclasses import dataclass, field

# images/systemd/appliance.service: Restart=on-failure, RestartSec=100ms, StartLimitBurst=5 (the first start
# and four restarts within StartLimitIntervalSec=300; one more and systemd leaves the unit down).
RESTART_SEC, MAX_KILLS = 0.1, 4


@dataclass(frozen=True)
class SupervisorBenchOptions:
    repeat: int = 3  # boots with the models, and `--help` runs for the baseline
    kills: int = 2  # kill -9 of the appliance per boot, each restarted as systemd would (1 to MAX_KILLS)
    restart_sec: float = RESTART_SEC  # the unit's RestartSec: from the killed process's end to the new spawn
    idle_s: float = 5.0  # rest after the models are warm, before memory is read
    baseline_boot: bool = True  # one more boot first, with an empty model store
    timeout_s: float = 180.0  # for READY=1, and for each wait after it (warm, serving again, exit)
    watchdog_usec: int = 2_000_000
    activation: bool = True  # hold the ports and pass them as images/systemd/appliance.socket does


@dataclass
class Kill:
    nth: int  # within its boot
    pid: int  # the killed process
    exit_code: int | None  # as reaped: -9
    gone_s: float  # SIGKILL → the process reaped
    left: list[int]  # processes of its session still running once it was gone (killed before the restart)
    restart_sec: float  # slept between its end and the new spawn
    new_pid: int
    ready_s: float  # SIGKILL → the new process's READY=1: serving again
    api_s: float  # SIGKILL → GET /health first answered by the new process
    wyoming_s: float  # SIGKILL → a Wyoming Describe answered with Info on the STT port
    warm_s: float  # SIGKILL → the new process's /health "ready": true
    held_s: float | None = None  # SIGKILL → the answer to a GET /health sent on a new connection once it was gone
    held: str = ""  # what became of that request: "HTTP 200", or why none came ("refused", …)
    sip_s: float | None = None  # SIGKILL → the answer to a SIP OPTIONS (one UDP datagram) sent at the same time
    sip: str = ""  # what became of it: "SIP/2.0 200 OK", or "no answer" (lost with the port)


@dataclass
class Boot:
    store: str
    ready_s: float  # spawn → READY=1 arrived
    api_s: float  # spawn → GET /health first answered
    warm_s: float  # spawn → GET /health "ready": true
    status: str  # the STATUS= sent with READY=1
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # by process, and "total"; MiB
    kills: list[Kill] = field(default_factory=list)
    stop_s: float = 0.0  # SIGTERM → exit
    exit_code: int | None = None
    outlived: list[int] = field(default_factory=list)  # processes of its session alive after it exited
    watchdog_pings: list[int] = field(default_factory=list)  # per process: the first, then each restart


@dataclass(frozen=True)
class Notice:
    """One notify datagram: when it arrived, who sent it (None when the kernel did not say) and its fields."""

    at: float
    pid: int | None
    fields: dict[str, str]
