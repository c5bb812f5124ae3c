"""The device's identity towards the fleet console and its signed requests.

The identity is an Ed25519 key made on the device at first use (``device/identity.pem`` in the state
directory, 0600); the device's id is the first 16 hex digits of the SHA-256 of the raw public key, so the
console can check that an id belongs to a key. After enrolment every request the device makes to the console is
signed: the signature covers the method, the path with its query, the time and the SHA-256 of the body, and
the console accepts it only within ``SKEW_S`` of its own clock, from a device that is enrolled and not revoked.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.config.files import write_atomic
from appliance.errors import ApplianceError

DEVICE, DATE, SIGNATURE = "X-Appliance-Device", "X-Appliance-Date", "X-Appliance-Signature"
SKEW_S = 300


class IdentityError(ApplianceError):
    """The device key cannot be read, or a signed request does not verify; the message says which."""


def device_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class DeviceKey:
    key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def id(self) -> str:
        return device_id_of(self.public_raw)

    def sign(self, method: str, target: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The headers that sign a request (``target``: the path with its query string)."""
        date = str(int(time.time() if now is None else now))
        signature = self.key.sign(canonical(method, target, date, body))
        return {DEVICE: self.id, DATE: date, SIGNATURE: base64.b64encode(signature).decode()}


def load_or_make(state: Path) -> DeviceKey:
    """The device's key from ``state/device/identity.pem``, made (and its public half written beside it) on
    first use."""
    path = state / "device" / "identity.pem"
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (ValueError, TypeError, OSError) as exc:
            raise IdentityError(f"{path} is not a readable private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key: remove it to make one")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_atomic(path, pem.decode(), 0o600, parents=True)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_atomic(state / "device" / "identity.pub", public.decode(), 0o644)
    return DeviceKey(key)


def canonical(method: str, target: str, date: str, body: bytes) -> bytes:
    return "\n".join(["appliance-request-v1", method.upper(), target, date, hashlib.sha256(body).hexdigest()]).encode()


def verify(public_hex: str, headers: dict[str, str], method: str, target: str, body: bytes,
           now: float | None = None) -> None:
    """Check a request's signature against the device's public key (hex); raises IdentityError saying why not."""
    lowered = {name.lower(): value for name, value in headers.items()}
    date, signature = lowered.get(DATE.lower(), ""), lowered.get(SIGNATURE.lower(), "")
    if not date.isdigit() or not signature:
        raise IdentityError(f"unsigned request: {DATE} and {SIGNATURE} are needed")
    skew = abs((time.time() if now is None else now) - int(date))
    if skew > SKEW_S:
        raise IdentityError(f"the request's time is {skew:.0f} s off the console's clock (at most {SKEW_S} s)")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        key.verify(base64.b64decode(signature, validate=True), canonical(method, target, date, body))
    except (InvalidSignature, ValueError) as exc:
        raise IdentityError("the request's signature does not verify") from exc
