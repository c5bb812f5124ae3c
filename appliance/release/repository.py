"""The update repository on disk, built with python-tuf's Metadata API and its ``Repository`` editing base.

Layout (static files: any web server, CDN or object store can serve the directory)::

    metadata/N.root.json           every root version (clients walk the chain), plus root.json (the newest)
    metadata/N.<role>.json         targets and the delegated roles models, config, firmware; snapshot
    metadata/timestamp.json        the only file that is not versioned by name
    targets/<dir>/<sha256>.<name>  consistent snapshots: a target's file is named by its hash

Roles: root (offline keys, any threshold), targets (delegates ``models/*``, ``config/*``, ``firmware/*`` to the
roles of those names), snapshot and timestamp (online keys, short expiry). ``close()`` signs a new version with
every key of the role found unlocked in ``signers``; too few signatures for the threshold is an error before
anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from appliance.config.files import write_atomic
from appliance.errors import ApplianceError

DELEGATED = {"models": ["models/*", "models/*/*", "models/*/*/*"], "config": ["config/*/*"],
             "firmware": ["firmware/*/*/*"]}
TOP = ("root", "targets", "snapshot", "timestamp")


class RepositoryError(ApplianceError):
    """The repository cannot be read, signed or written; the message says which role and the fix."""


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed (days)."""

    root: float = 365
    targets: float = 365
    delegated: float = 90
    snapshot: float = 7
    timestamp: float = 1

    def of(self, role: str) -> timedelta:
        days = getattr(self, role) if role in TOP else self.delegated
        return timedelta(days=days)


@dataclass
class FileRepository(Repository):
    """A TUF repository in ``root`` whose roles are signed by the unlocked keys in ``signers`` (key id ->
    signer); ``unlock`` is asked for a key id that is not there yet (it may return None: key not available)."""

    root_dir: Path
    signers: dict[str, Signer] = field(default_factory=dict)
    unlock: Callable[[str], Signer | None] = lambda keyid: None
    expiry: Expiry = field(default_factory=Expiry)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def metadata_dir(self) -> Path:
        return self.root_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.root_dir / "targets"

    # ---- tuf.repository.Repository -----------------------------------------------------------------
    def open(self, role: str) -> Metadata:
        path = self._latest_path(role)
        if path is None:
            return self._fresh(role)
        try:
            return Metadata.from_file(str(path))
        except Exception as exc:
            raise RepositoryError(f"{path} is not valid TUF metadata: {exc}") from None

    def close(self, role: str, md: Metadata) -> None:
        md.signed.version += 1
        md.signed.expires = (self.now() + self.expiry.of(role)).replace(microsecond=0)
        self.sign(role, md)
        self._write(role, md)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        roles = ["targets", *self.delegated_roles()]
        return {f"{r}.json": MetaFile(self.open(r).signed.version) for r in roles}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(self.open("snapshot").signed.version)

    # ---- signing --------------------------------------------------------------------------------
    def delegators(self, role: str, md: Metadata) -> list[Root | Targets]:
        """Who must accept a new version of ``role``: for root, the new root itself and the one before it
        (a rotation is signed by both thresholds); for the other top roles, root; for a delegated one, targets."""
        if role == "root":
            return [md.signed] + ([self.root()] if self._latest_path("root") else [])
        return [self.root() if role in TOP else self.targets()]

    def sign(self, role: str, md: Metadata) -> None:
        """Replace the signatures with those of every available key of the role, then have each delegator
        verify them (python-tuf's own threshold check) before anything is written."""
        delegators = self.delegators(role, md)
        keyids = dict.fromkeys(k for d in delegators for k in d.get_delegated_role(role).keyids)
        md.signatures.clear()
        for keyid in keyids:
            signer = self.signer(keyid)
            if signer is not None:
                md.sign(signer, append=True)
        for delegator in delegators:
            try:
                delegator.verify_delegate(role, md.signed_bytes, md.signatures)
            except UnsignedMetadataError:
                needed = delegator.get_delegated_role(role).threshold
                raise RepositoryError(f"role {role}: {len(md.signatures)} signature(s) from available keys, "
                                      f"{needed} needed; fix: --keys with the directory holding the {role} "
                                      "key(s) and their passphrases") from None

    def signer(self, keyid: str) -> Signer | None:
        if keyid not in self.signers:
            found = self.unlock(keyid)
            if found is None:
                return None
            self.signers[keyid] = found
        return self.signers[keyid]

    # ---- reading --------------------------------------------------------------------------------
    def delegated_roles(self) -> list[str]:
        if self._latest_path("targets") is None:
            return []
        delegations = self.targets().delegations
        return list(delegations.roles or {}) if delegations else []

    def versions(self) -> dict[str, tuple[int, datetime]]:
        """Each role's newest version and expiry."""
        out = {}
        for role in [*TOP, *self.delegated_roles()]:
            if self._latest_path(role) is not None:
                signed = self.open(role).signed
                out[role] = (signed.version, signed.expires)
        return out

    def target_file_path(self, target: TargetFile) -> Path:
        folder, _, name = target.path.rpartition("/")
        return self.targets_dir / folder / f"{target.hashes['sha256']}.{name}"

    # ---- files ----------------------------------------------------------------------------------
    def _fresh(self, role: str) -> Metadata:
        signed = {"root": Root, "snapshot": Snapshot, "timestamp": Timestamp}.get(role, Targets)
        md = Metadata(signed(expires=self.now()))
        md.signed.version = 0  # close() makes it 1
        return md

    def _latest_path(self, role: str) -> Path | None:
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
            return path if path.exists() else None
        numbered = [(int(p.name.split(".", 1)[0]), p) for p in self.metadata_dir.glob(f"*.{role}.json")
                    if p.name.split(".", 1)[0].isdigit()]
        return max(numbered)[1] if numbered else None

    def _write(self, role: str, md: Metadata) -> None:
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        data = md.to_bytes(JSONSerializer(compact=False))
        write_atomic(self.metadata_dir / name, data, parents=True)
        if role == "root":
            write_atomic(self.metadata_dir / "root.json", data)


def create(repo: FileRepository, root_keys: list[Key], threshold: int, role_keys: dict[str, Key]) -> None:
    """A new repository: root with ``threshold`` of ``root_keys``; targets, snapshot and timestamp each with
    their key in ``role_keys``; targets delegating models, config and firmware to theirs."""
    if repo._latest_path("root") is not None:
        raise RepositoryError(f"{repo.root_dir} already holds a repository; fix: use another directory")
    if not 1 <= threshold <= len(root_keys):
        raise RepositoryError(f"root threshold {threshold} needs between 1 and {len(root_keys)} root keys")
    with repo.edit_root() as root:
        root.consistent_snapshot = True
        for key in root_keys:
            root.add_key(key, "root")
        root.roles["root"].threshold = threshold
        for role in ("targets", "snapshot", "timestamp"):
            root.add_key(role_keys[role], role)
    with repo.edit_targets() as targets:
        targets.delegations = Delegations(
            keys={role_keys[n].keyid: role_keys[n] for n in DELEGATED},
            roles={n: DelegatedRole(n, [role_keys[n].keyid], 1, True, DELEGATED[n]) for n in DELEGATED})
    for name in DELEGATED:
        with repo.edit_targets(name):
            pass
    repo.do_snapshot(force=True)
    repo.do_timestamp(force=True)


def rotate_root(repo: FileRepository, add: list[Key], remove: list[str], threshold: int | None) -> int:
    """A new root version with keys added and removed (and maybe a new threshold), signed by enough old and
    new root keys; returns its version. Clients that trust the old root follow the chain to it."""
    with repo.edit_root() as root:
        for key in add:
            root.add_key(key, "root")
        for keyid in remove:
            if keyid not in root.roles["root"].keyids:
                raise RepositoryError(f"key {keyid[:12]}… is not a root key")
            root.revoke_key(keyid, "root")
        if threshold is not None:
            root.roles["root"].threshold = threshold
        if not 1 <= root.roles["root"].threshold <= len(root.roles["root"].keyids):
            raise RepositoryError(f"root threshold {root.roles['root'].threshold} with "
                                  f"{len(root.roles['root'].keyids)} root key(s) could never be met")
        version = root.version + 1
    return version


def dumps(data: object) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()
