"""What the update agent remembers across restarts, each file replaced atomically (write, fsync, rename):

    journal.json    the install in progress and its step, written *before* the step acts (Mender's rule): a
                    kill at any point resumes that step, and every step is idempotent
    installed.json  the version of each model, config bundle and firmware the agent installed
    refused.json    targets that failed their smoke test or health check (not retried; a newer version is)
    status.json     the last check, what is pending, the last error: `appliance agent status` and /health

Steps of one install: ``download`` → ``verify`` → ``activate`` → ``check`` → done, or → ``rollback`` → done.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.config.files import write_atomic

Step = Literal["download", "verify", "activate", "check", "rollback"]


@dataclass
class Job:
    """One install in progress."""

    step: Step
    kind: Literal["model", "config", "firmware"]
    target: str  # the TUF target path of the manifest, bundle or image
    name: str  # model id, config bundle name or board
    version: int
    tree: str | None = None  # models: the new version's tree
    previous: str | None = None  # models: the tree in use before; config: the previous bundle's file
    reason: str | None = None  # rollback: why


@dataclass
class Status:
    last_check: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    pending: list[str] = field(default_factory=list)
    staged: str | None = None  # a firmware target kept in staging (no A/B slots here)
    notes: list[str] = field(default_factory=list)


class AgentState:
    def __init__(self, root: Path) -> None:
        self.root = root

    def job(self) -> Job | None:
        data = self._read("journal.json")
        return Job(**data) if data else None

    def begin(self, job: Job) -> None:
        self._write("journal.json", asdict(job))

    def finish(self) -> None:
        (self.root / "journal.json").unlink(missing_ok=True)

    def installed(self) -> dict[str, dict[str, int]]:
        data = self._read("installed.json") or {}
        return {kind: dict(data.get(kind, {})) for kind in ("model", "config", "firmware")}

    def record_installed(self, kind: str, name: str, version: int) -> None:
        data = self.installed()
        data[kind][name] = version
        self._write("installed.json", data)

    def refused(self) -> dict[str, str]:
        return dict(self._read("refused.json") or {})

    def refuse(self, target: str, reason: str) -> None:
        self._write("refused.json", {**self.refused(), target: reason})

    def status(self) -> Status:
        data = self._read("status.json")
        return Status(**data) if data else Status()

    def save_status(self, status: Status) -> None:
        self._write("status.json", asdict(status))

    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.root / name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a file from before a crash that never completed is impossible (rename), but a
            return None  # hand-edited one is: treat it as absent rather than stop updating

    def _write(self, name: str, data: Any) -> None:
        write_atomic(self.root / name, json.dumps(data, indent=1), parents=True)
