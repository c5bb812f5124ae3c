"""Installing one target, step by step, each step recorded in the journal before it acts (see ``state``):

* **model**: the signed manifest, then each file the store lacks (a binary delta from the blob the store has
  when the repository offers one, else the whole file), all into the store's staging area and verified against
  their signed hashes; the version tree is built and smoke-tested through the runtime selection; it becomes
  active by an atomic switch (the previous version stays, pointed at by ``previous/<id>``); the health check
  then decides: kept (older versions pruned) or switched back.
* **config**: the bundle is validated against the settings schema (a bundle may not touch ``fleet``: where
  updates come from changes only with the image), written over the fleet layer of the configuration
  (the previous one kept), and applied through the reload path; the health check keeps or restores it.
* **firmware**: verified and handed to the A/B slot writer; a system without slots keeps it staged and says so.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tuf.api.metadata import TargetFile

from appliance.config.files import write_atomic
from appliance.errors import ApplianceError
from appliance.fleet.client import FleetError, TufClient
from appliance.fleet.download import fetch
from appliance.fleet.events import Event, EventLog, since
from appliance.fleet.state import AgentState, Job, Step
from appliance.models import ModelStore
from appliance.models import delta as deltas
from appliance.models.store import ModelFiles

log = logging.getLogger(__name__)

Smoke = Callable[[ModelFiles], str | None]  # None: passed; else why not
Health = Callable[[Job], str | None]  # after a switch: None when healthy; else why not
SlotWriter = Callable[[Path, dict[str, Any]], None]


class NoSlots(FleetError):
    """This system has no A/B root slots to write firmware to."""


@dataclass
class Hooks:
    """What the installer asks of the running appliance."""

    smoke: Smoke  # a runtime selection of a model version that is not active yet
    health: Health  # services up and the new version in use
    reload: Callable[[], None] = lambda: None  # apply the configuration (SIGHUP semantics)
    switched: Callable[[str], None] = lambda model_id: None  # a model's active version changed
    slot_writer: SlotWriter | None = None  # the images issue's A/B writer; None: no slots here


@dataclass
class Installer:
    store: ModelStore
    client: TufClient
    http: httpx.Client
    state: AgentState
    events: EventLog
    hooks: Hooks
    bundle: Path  # the fleet layer of the configuration (merged over the local file by the loader)
    stop: threading.Event
    deltas: bool = True  # use the repository's binary deltas (off: the whole-file baseline of the benchmark)

    # ---- one target -------------------------------------------------------------------------------
    def install(self, target: TargetFile) -> bool:
        """Install ``target`` from the start; True when it ended installed and healthy."""
        custom = target.custom
        kind = custom["kind"]
        name = custom.get("model_id") or custom.get("name") or custom.get("board") or target.path
        job = Job("download", kind, target.path, str(name), int(custom["version"]))
        self.state.begin(job)
        return self.resume(job, target)

    def resume(self, job: Job, target: TargetFile | None = None) -> bool:
        """Carry on with ``job`` from its recorded step (after a crash, or straight from ``install``)."""
        if target is None and job.step in ("download", "verify"):
            target = self.client.targetinfo(job.target)
            if target is None:  # no longer offered: nothing was switched yet, drop it
                self.state.finish()
                return False
        run = {"model": self._model, "config": self._config, "firmware": self._firmware}[job.kind]
        return run(job, target)

    # ---- models -----------------------------------------------------------------------------------
    def _model(self, job: Job, target: TargetFile | None) -> bool:
        if job.step in ("download", "verify"):
            assert target is not None
            start, wire = time.monotonic(), 0
            manifest_path, received = self._download(target, f"manifest-{target.hashes['sha256']}.json")
            wire += received
            manifest = json.loads(manifest_path.read_text())
            for f in manifest["files"]:
                wire += self._ensure_blob(f)
            self.events.emit(Event("download", True, f"{len(manifest['files'])} file(s)", "model", job.target,
                                   job.name, job.version, wire, since(start)))
            job.step = "verify"
            self.state.begin(job)
            tree = self.store.install_tree({**manifest, "id": job.name})
            manifest_path.unlink(missing_ok=True)
            problem = self.hooks.smoke(self.store.files_at(tree))
            if problem is not None:
                return self._refuse(job, f"smoke test failed: {problem}")
            current = self.store.active_tree(job.name)
            job.step, job.tree, job.previous = "activate", str(tree), str(current) if current else None
            self.state.begin(job)
        if job.step == "activate":
            assert job.tree is not None
            self.store.activate(job.name, Path(job.tree))
            self.hooks.switched(job.name)
            self._step(job, "check")
        if job.step == "check" and self._healthy(job, "the switch"):
            self.store.prune(job.name)
            return True
        if job.step == "rollback":
            if job.previous is not None:
                self.store.activate(job.name, Path(job.previous))
                self.hooks.switched(job.name)
            return self._refuse(job, job.reason or "rolled back", rolled_back=True)
        return False

    def _ensure_blob(self, f: dict[str, Any]) -> int:
        """Make the blob present; returns the bytes that crossed the wire for it."""
        sha = f["sha256"]
        if self.store.blob_path(sha).exists():
            return 0
        target = self.client.targetinfo(f["target"])
        if target is None or target.hashes.get("sha256") != sha:
            raise FleetError(f"the manifest names {f['target']}, which the repository does not sign as {sha[:12]}…")
        for base, path in (f.get("deltas") or {}).items() if self.deltas else ():
            if self.store.blob_path(base).exists():
                try:
                    return self._patch(target, base, path)
                except (FleetError, deltas.DeltaError) as exc:
                    log.warning("delta for %s not used (%s); downloading the whole file", f["name"], exc)
        path, received = self._download(target, sha)
        self.store.adopt_blob(path, sha)
        return received

    def _patch(self, target: TargetFile, base: str, delta_path: str) -> int:
        delta = self.client.targetinfo(delta_path)
        if delta is None:
            raise FleetError(f"delta {delta_path} is not signed")
        patch, received = self._download(delta, f"delta-{delta.hashes['sha256']}")
        out = self.store.staging / f"{target.hashes['sha256']}.patched"
        try:
            deltas.apply(self.store.blob_path(base), patch, out, target.length)
            from appliance.fleet.download import verify

            verify(target, out)
        finally:
            patch.unlink(missing_ok=True)
        self.store.adopt_blob(out, target.hashes["sha256"])
        return received

    def _download(self, target: TargetFile, name: str) -> tuple[Path, int]:
        dest = self.store.staging / name
        transfer = fetch(self.http, self.client.url_of(target), target, dest, self.stop)
        return transfer.path, transfer.received

    # ---- configuration ----------------------------------------------------------------------------
    def _config(self, job: Job, target: TargetFile | None) -> bool:
        previous = self.bundle.with_name(self.bundle.name + ".previous")
        if job.step in ("download", "verify"):
            assert target is not None
            start = time.monotonic()
            path, received = self._download(target, f"config-{target.hashes['sha256']}.toml")
            problem = check_bundle(path)
            if problem is not None:
                path.unlink(missing_ok=True)
                return self._refuse(job, problem)
            self.events.emit(Event("download", True, "", "config", job.target, job.name, job.version, received,
                                   since(start)))
            job.step, job.tree = "activate", str(path)
            job.previous = str(previous) if self.bundle.exists() else None
            if self.bundle.exists():
                shutil.copyfile(self.bundle, previous)
            self.state.begin(job)
        if job.step == "activate":
            assert job.tree is not None
            staged = Path(job.tree)
            if staged.exists():
                write_atomic(self.bundle, staged.read_bytes(), parents=True)
                staged.unlink()
            self.hooks.reload()
            self._step(job, "check")
        if job.step == "check" and self._healthy(job, "the reload"):
            return True
        if job.step == "rollback":
            if job.previous is not None and Path(job.previous).exists():
                write_atomic(self.bundle, Path(job.previous).read_bytes())
            elif job.previous is None:
                self.bundle.unlink(missing_ok=True)
            self.hooks.reload()
            return self._refuse(job, job.reason or "rolled back", rolled_back=True)
        return False

    # ---- firmware ---------------------------------------------------------------------------------
    def _firmware(self, job: Job, target: TargetFile | None) -> bool:
        if target is None:
            target = self.client.targetinfo(job.target)
            if target is None:
                self.state.finish()
                return False
        start = time.monotonic()
        path, received = self._download(target, f"firmware-{target.hashes['sha256']}")
        self.events.emit(Event("download", True, "", "firmware", job.target, job.name, job.version, received,
                               since(start)))
        self.state.finish()
        if self.hooks.slot_writer is None:
            status = self.state.status()
            note = f"firmware {job.name} v{job.version} staged at {path}: this system has no A/B slots to install it to"
            status.staged, status.notes = job.target, [n for n in status.notes if "staged" not in n] + [note]
            self.state.save_status(status)
            self.events.emit(Event("staged", False, note, "firmware", job.target, job.name, job.version))
            return False
        try:
            self.hooks.slot_writer(path, dict(target.custom))
        except ApplianceError as exc:  # a bundle this system cannot take: not retried (a newer one is)
            return self._refuse(job, f"firmware not installed: {exc}")
        path.unlink(missing_ok=True)  # in the slot now: give the staging space back
        self.state.record_installed("firmware", job.name, job.version)
        self.events.emit(Event("apply", True, "written to the inactive slot", "firmware", job.target, job.name,
                               job.version))
        return True

    # ---- steps and endings -------------------------------------------------------------------------
    def _step(self, job: Job, step: Step, reason: str | None = None) -> None:
        """Record the next step before it acts."""
        job.step, job.reason = step, reason or job.reason
        self.state.begin(job)

    def _healthy(self, job: Job, after: str) -> bool:
        """The check step: healthy → recorded as installed (True); else the job moves on to rollback."""
        problem = self.hooks.health(job)
        if problem is None:
            self.state.record_installed(job.kind, job.name, job.version)
            self.state.finish()
            self.events.emit(Event("apply", True, f"healthy after {after}", job.kind, job.target, job.name,
                                   job.version))
            return True
        self._step(job, "rollback", f"health check failed after {after}: {problem}")
        return False

    def _refuse(self, job: Job, reason: str, rolled_back: bool = False) -> bool:
        self.state.refuse(job.target, reason)
        self.state.finish()
        log.warning("update %s v%s not installed: %s", job.name, job.version, reason)
        self.events.emit(Event("rollback" if rolled_back else "refused", False, reason, job.kind, job.target,
                               job.name, job.version))
        return False


def check_bundle(path: Path) -> str | None:
    """Why a configuration bundle cannot be applied, or None."""
    from appliance.config.loader import read_toml, validate_toml

    try:
        if "fleet" in read_toml(path):
            return "a configuration bundle may not change the fleet section (set only by the device's image)"
        validate_toml(path)
    except ApplianceError as exc:
        return f"invalid configuration bundle: {exc}"
    return None
