"""API keys: random bearer tokens, stored only as SHA-256 hashes in a JSON file replaced atomically; and
one-time sign-in links (a code, also stored hashed, that expires within minutes and, used once, becomes a new
key of its name in the browser's cookie: how the device's own kiosk screen signs in with no key typed)."""

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
LINK_PREFIX = "sl"


class ApiKeyError(ApplianceError):
    """A key operation cannot be done (unknown id, unreadable key file)."""


@dataclass
class ApiKey:
    id: str
    name: str
    sha256: str
    created: float
    revoked: float | None = None


@dataclass
class SignInLink:
    sha256: str
    name: str  # the name of the key it becomes
    expires: float


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[dict[str, object]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ApiKeyError(f"key file {self.path} is unreadable: {exc}") from None
        return data if isinstance(data, dict) else {}

    def _load(self) -> dict[str, ApiKey]:
        return {str(k["id"]): ApiKey(**k) for k in self._read().get("keys", [])}  # type: ignore[arg-type]

    def _links(self) -> list[SignInLink]:
        return [SignInLink(**link) for link in self._read().get("links", [])]  # type: ignore[arg-type]

    def _save(self, keys: dict[str, ApiKey], links: list[SignInLink] | None = None) -> None:
        data = {"keys": [asdict(k) for k in keys.values()],
                "links": [asdict(link) for link in (self._links() if links is None else links)]}
        write_atomic(self.path, json.dumps(data, indent=1), 0o600, parents=True)

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key; the token is returned once and never stored."""
        with self._lock:
            keys = self._load()
            key, token = _new_key(name)
            keys[key.id] = key
            self._save(keys)
        return key, token

    def create_link(self, name: str, ttl_s: float = 120.0) -> str:
        """A one-time sign-in code for a new key called ``name``, valid ``ttl_s`` seconds; returned once."""
        code = f"{LINK_PREFIX}_{secrets.token_urlsafe(32)}"
        with self._lock:
            links = [link for link in self._links() if link.expires > time.time()]
            links.append(SignInLink(_hash(code), name, time.time() + ttl_s))
            self._save(self._load(), links)
        return code

    def redeem(self, code: str) -> tuple[ApiKey, str] | None:
        """The new key a sign-in code stands for (the code is spent), or None if it is unknown, spent or
        expired. The key replaces (revokes) the earlier keys of its name: a kiosk signing in again after a
        restart leaves one key behind, not one per restart."""
        digest = _hash(code)
        with self._lock:
            links = self._links()
            found = next((link for link in links if hmac.compare_digest(link.sha256, digest)), None)
            if found is None or found.expires <= time.time():
                return None
            keys = self._load()
            for old in keys.values():
                if old.name == found.name and not old.revoked:
                    old.revoked = time.time()
            key, token = _new_key(found.name)
            keys[key.id] = key
            self._save(keys, [link for link in links if link is not found and link.expires > time.time()])
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


def _new_key(name: str) -> tuple[ApiKey, str]:
    key_id = secrets.token_hex(4)
    token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return ApiKey(key_id, name, _hash(token), time.time()), token


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
