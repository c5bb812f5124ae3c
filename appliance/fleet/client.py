"""The device's view of the update repository, verified by python-tuf's ``ngclient``.

``refresh()`` walks root → timestamp → snapshot → targets with every check TUF makes (signatures and
thresholds, versions that only go up, expiry, lengths and hashes of metadata). ``offers(role)`` lists what a
delegated role offers: the role's metadata is loaded through ngclient (which verifies it against the snapshot),
and every entry is then looked up again with ``get_targetinfo`` so that only targets the delegation tree really
grants are returned (a role listing paths outside its own is ignored, with the reason kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

PROBES = {"models": "models/-", "config": "config/-/-", "firmware": "firmware/-/-/-"}


class FleetError(ApplianceError):
    """An update cannot proceed; the message says why (refused metadata, a failed download, a full disk…)."""


class RefusedMetadata(FleetError):
    """The repository's metadata failed TUF verification: nothing from this poll is used."""


@dataclass
class TufClient:
    url: str  # the repository's base URL: metadata/ and targets/ below it
    metadata_dir: Path
    trusted_root: bytes  # the root shipped with the device (its trust anchor)
    user_agent: str = "appliance-agent"
    ignored: list[str] = field(default_factory=list)  # entries skipped since the last refresh(), and why

    def __post_init__(self) -> None:
        self._updater: Updater | None = None

    @property
    def targets_url(self) -> str:
        return self.url.rstrip("/") + "/targets/"

    def refresh(self) -> None:
        self.ignored = []
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        config = UpdaterConfig(app_user_agent=self.user_agent)
        try:
            self._updater = Updater(str(self.metadata_dir), self.url.rstrip("/") + "/metadata/", None,
                                    self.targets_url, config=config, bootstrap=self.trusted_root)
            self._updater.refresh()
        except tuf_errors.RepositoryError as exc:
            self._updater = None
            raise RefusedMetadata(f"update metadata refused ({type(exc).__name__}): {exc}") from None
        except tuf_errors.DownloadError as exc:
            self._updater = None
            raise FleetError(f"update repository {self.url} unreachable: {exc}") from None

    def offers(self, role: str) -> list[TargetFile]:
        """The targets ``role`` offers that TUF resolves to that role's entry."""
        updater = self._require()
        try:
            updater.get_targetinfo(PROBES[role])  # loads and verifies the role's metadata
            listed = Metadata[Targets].from_file(str(self.metadata_dir / f"{role}.json")).signed.targets
        except tuf_errors.RepositoryError as exc:
            raise RefusedMetadata(f"update metadata of {role} refused ({type(exc).__name__}): {exc}") from None
        except tuf_errors.DownloadError as exc:
            raise FleetError(f"update repository {self.url} unreachable: {exc}") from None
        except FileNotFoundError:
            return []
        granted = []
        for path, entry in listed.items():
            info = self.targetinfo(path)
            if info is None or info.hashes != entry.hashes:
                self.ignored.append(f"{role} lists {path} outside what it is delegated")
                continue
            granted.append(info)
        return granted

    def targetinfo(self, path: str) -> TargetFile | None:
        try:
            return self._require().get_targetinfo(path)
        except tuf_errors.RepositoryError as exc:
            raise RefusedMetadata(f"update metadata for {path} refused ({type(exc).__name__}): {exc}") from None
        except tuf_errors.DownloadError as exc:
            raise FleetError(f"update repository {self.url} unreachable: {exc}") from None

    def url_of(self, target: TargetFile) -> str:
        """Where a target's file is: consistent snapshots name it by its hash."""
        folder, _, name = target.path.rpartition("/")
        return f"{self.targets_url}{folder + '/' if folder else ''}{target.hashes['sha256']}.{name}"

    def _require(self) -> Updater:
        if self._updater is None:
            raise FleetError("refresh() first")
        return self._updater
