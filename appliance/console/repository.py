"""The console and the signed update repository (``console.repository``, the directory `appliance release`
fills; docs/fleet.md):

- a release is accepted only when every target it names is published there: read from the repository's
  signed metadata of the delegated roles (no key needed);
- with the online snapshot and timestamp keys (``console.keys``; passphrases from
  ``APPLIANCE_KEY_PASSPHRASE[_<NAME>]``, never asked for), the console re-signs the snapshot and timestamp once
  the timestamp has less than ``REFRESH_BEFORE`` left, so devices never meet an expired repository between
  releases (they refuse one). Root and targets keys stay offline: the console never loads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.release.keys import discover, unlock
from appliance.release.publish import publish
from appliance.release.repository import FileRepository

REFRESH_BEFORE = timedelta(hours=12)
ROLES = {"model": ("models", "model_id"), "config": ("config", "name"), "firmware": ("firmware", "board")}
ONLINE = ("snapshot", "timestamp")


class RepositoryLinkError(ApplianceError):
    """The repository cannot be read or re-signed; the message says what is missing."""


class Published:
    def __init__(self, root: Path, keys: list[Path]) -> None:
        if not (root / "metadata").is_dir():
            raise RepositoryLinkError(f"console.repository {root} has no metadata/: not an update repository")
        found = discover(keys)
        self.repo = FileRepository(root, unlock=lambda keyid: unlock(found[keyid]) if keyid in found else None)
        self.keys = keys

    def versions(self, kind: str, name: str) -> list[int]:
        """The published versions of a model id, configuration bundle or firmware board."""
        role, field = ROLES[kind]
        try:
            offered = self.repo.targets(role).targets.values()
        except Exception as exc:  # missing or unreadable role metadata: python-tuf's own errors
            raise RepositoryLinkError(f"cannot read the {role} role of the repository: {exc}") from exc
        return sorted(int(t.custom["version"]) for t in offered
                      if t.custom.get("kind") == kind and t.custom.get(field) == name and "version" in t.custom)

    def missing(self, targets: dict[str, dict[str, int]]) -> list[str]:
        """What of a release is not in the repository, said per target."""
        out = []
        for kind, names in targets.items():
            for name, version in names.items():
                have = self.versions(kind, name)
                if int(version) not in have:
                    out.append(f"{kind} {name} v{version} is not published (published: "
                               f"{', '.join(f'v{v}' for v in have) or 'none'})")
        return out

    def expires(self) -> datetime:
        return self.repo.timestamp().expires

    def refresh(self, now: datetime | None = None) -> tuple[int, int] | None:
        """Re-sign snapshot and timestamp when the timestamp expires within REFRESH_BEFORE; their new versions,
        or None when it was fresh enough."""
        now = now or datetime.now(UTC)
        if self.expires() - now > REFRESH_BEFORE:
            return None
        try:
            return publish(self.repo)
        except Exception as exc:  # a locked or missing online key, a full disk: said, and tried again later
            raise RepositoryLinkError(f"cannot re-sign the repository's timestamp (keys in "
                                      f"{', '.join(map(str, self.keys)) or 'none'}): {exc}") from exc


def unpublished(published: Published | None, targets: dict[str, dict[str, int]]) -> list[str]:
    """What of a release's targets the repository lacks (nothing when the console has no repository set)."""
    if published is None:
        return []
    try:
        return published.missing(targets)
    except RepositoryLinkError as exc:
        return [str(exc)]
