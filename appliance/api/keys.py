"""API keys: random bearer tokens, stored only as SHA-256 hashes in a JSON file replaced atomically."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.config.files import write_atomic
from appliance.errors import ApplianceError

PREFIX = "ak"


class ApiKeyError(ApplianceError):
    """A key operation cannot be done (unknown id, unreadable key file)."""


@dataclass
class ApiKey:
    id: str
    name: str
    sha256: str
    created: float
    revoked: float | None = None


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, ApiKey]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ApiKeyError(f"key file {self.path} is unreadable: {exc}") from None
        return {k["id"]: ApiKey(**k) for k in data.get("keys", [])}

    def _save(self, keys: dict[str, ApiKey]) -> None:
        write_atomic(self.path, json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=1), 0o600, parents=True)

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key; the token is returned once and never stored."""
        key_id = secrets.token_hex(4)
        token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name, _hash(token), time.time())
        with self._lock:
            keys = self._load()
            keys[key_id] = key
            self._save(keys)
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            keys = self._load()
            if key_id not in keys:
                raise ApiKeyError(f"no API key with id {key_id!r}; see: appliance keys list")
            keys[key_id].revoked = keys[key_id].revoked or time.time()
            self._save(keys)
            return keys[key_id]

    def list(self) -> list[ApiKey]:
        return sorted(self._load().values(), key=lambda k: k.created)

    def check(self, token: str) -> tuple[ApiKey | None, str]:
        """(key, "") if valid; (None, reason) or (revoked key, "revoked") otherwise. Constant-time compare."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None, "malformed"
        key = self._load().get(parts[1])
        if key is None or not hmac.compare_digest(key.sha256, _hash(token)):
            return None, "unknown"
        if key.revoked:
            return key, "revoked"
        return key, ""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
