"""Signing keys of the update repository: Ed25519 private keys in PKCS#8 PEM files encrypted with a passphrase
(scrypt-derived by ``cryptography``'s best available encryption), each beside a public ``.pub.json`` carrying
the TUF key (and so its key id). Key files live in a key directory that is never the repository's: root keys on
an offline medium, the online keys (snapshot, timestamp, delegated roles) where `publish` runs.

A passphrase comes from ``APPLIANCE_KEY_PASSPHRASE_<NAME>`` (the key's name upper-cased, ``-`` as ``_``), else
``APPLIANCE_KEY_PASSPHRASE``, else the ``ask`` callback (the CLI prompts with hidden input). Passphrases are
never logged nor written anywhere.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from appliance.errors import ApplianceError

Ask = Callable[[str], str]
NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


class SigningKeyError(ApplianceError):
    """A key cannot be made, found or unlocked; the message names the key file and the fix."""


@dataclass(frozen=True)
class KeyFile:
    name: str
    private: Path
    public: Path

    @property
    def key(self) -> Key:
        return SSlibKey.from_dict(*_keyid_and_dict(self.public))

    @property
    def keyid(self) -> str:
        return self.key.keyid


def keyfile(keys_dir: Path, name: str) -> KeyFile:
    return KeyFile(name, keys_dir / f"{name}.pem", keys_dir / f"{name}.pub.json")


def generate(keys_dir: Path, name: str, passphrase: str, repository: Path | None = None) -> KeyFile:
    """A new Ed25519 key ``name`` in ``keys_dir`` (private file mode 0600), refusing to write inside the
    repository directory or over an existing key."""
    if not NAME.match(name):
        raise SigningKeyError(f"key name {name!r}: use lower-case letters, digits and '-' (e.g. root-1, timestamp)")
    if len(passphrase) < 8:
        raise SigningKeyError(f"key {name}: the passphrase needs at least 8 characters")
    keys_dir = keys_dir.resolve()
    if repository is not None and keys_dir.is_relative_to(repository.resolve()):
        raise SigningKeyError(f"{keys_dir} is inside the repository {repository}: keys never enter the repository "
                        "directory; fix: --keys somewhere else (root keys on an offline medium)")
    found = keyfile(keys_dir, name)
    if found.private.exists() or found.public.exists():
        raise SigningKeyError(f"key {name} already exists in {keys_dir}; fix: choose another name")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase.encode()))
    keys_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(found.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = CryptoSigner(private).public_key
    found.public.write_text(json.dumps({"keyid": public.keyid, "name": name, "key": public.to_dict()}, indent=1))
    return found


def passphrase_for(name: str, ask: Ask | None) -> str:
    specific = f"APPLIANCE_KEY_PASSPHRASE_{name.upper().replace('-', '_')}"
    value = os.environ.get(specific) or os.environ.get("APPLIANCE_KEY_PASSPHRASE")
    if value:
        return value
    if ask is None:
        raise SigningKeyError(f"key {name} is locked and no passphrase was given; fix: set {specific} or "
                        "APPLIANCE_KEY_PASSPHRASE, or run interactively")
    return ask(f"passphrase for key {name}")


def unlock(found: KeyFile, ask: Ask | None = None) -> CryptoSigner:
    """The key's signer, after decrypting its file with its passphrase."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        pem = found.private.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"key {found.name}: cannot read {found.private} ({exc.strerror})") from None
    try:
        private = load_pem_private_key(pem, passphrase_for(found.name, ask).encode())
    except (ValueError, TypeError):
        raise SigningKeyError(f"key {found.name}: wrong passphrase, or {found.private} is not a key file") from None
    signer = CryptoSigner(private)
    if signer.public_key.keyid != found.keyid:
        raise SigningKeyError(f"key {found.name}: {found.public} does not belong to {found.private}")
    return signer


def discover(keys_dirs: list[Path]) -> dict[str, KeyFile]:
    """Every key file found in these directories, by key id."""
    found: dict[str, KeyFile] = {}
    for folder in keys_dirs:
        for public in sorted(folder.glob("*.pub.json")):
            candidate = keyfile(folder, public.name.removesuffix(".pub.json"))
            if candidate.private.exists():
                found[candidate.keyid] = candidate
    return found


def _keyid_and_dict(public: Path) -> tuple[str, dict]:
    try:
        data = json.loads(public.read_text())
        return data["keyid"], dict(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SigningKeyError(f"{public} is not a public key file written by `appliance release keygen`") from None
