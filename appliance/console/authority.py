"""The console's certificate authority and device enrolment.

The CA is an Ed25519 key and a self-signed certificate made on first start in the console's state directory
(``ca/key.pem`` 0600, ``ca/cert.pem``). An admin makes a one-time enrolment token (valid ``ttl``; only its
SHA-256 is stored); a device sends it with its Ed25519 public key, and gets a certificate for that key (its
device id as the subject's common name, its group as the organisational unit) and the CA's certificate. A
token is spent by its first use, refused once expired, and a revoked device's key cannot enrol again."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.config.files import write_atomic
from appliance.console.accounts import digest
from appliance.console.schema import Device, EnrolmentToken
from appliance.errors import ApplianceError
from appliance.fleet.identity import device_id_of

TOKEN_PREFIX = "et_"
DEVICE_CERT_DAYS = 825


class EnrolmentError(ApplianceError):
    """An enrolment refused; the message says why (a wrong, spent or expired token; a revoked key)."""


@dataclass(frozen=True)
class Authority:
    key: Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, public: Ed25519PublicKey, device_id: str, group: str | None) -> x509.Certificate:
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, device_id)]
        if group:
            subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, group))
        start = datetime.now(UTC) - timedelta(minutes=5)
        return (x509.CertificateBuilder().subject_name(x509.Name(subject)).issuer_name(self.certificate.subject)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + timedelta(days=DEVICE_CERT_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, None))


def load_or_make(state: Path, name: str = "appliance fleet console") -> Authority:
    key_path, cert_path = state / "ca" / "key.pem", state / "ca" / "cert.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise EnrolmentError(f"{key_path} is not an Ed25519 key")
        return Authority(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.now(UTC) - timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, None))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_atomic(key_path, pem.decode(), 0o600, parents=True)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
    return Authority(key, cert)


def make_token(session: Session, actor: str, group: str | None, ttl: timedelta) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    session.add(EnrolmentToken(digest=digest(token), group=group, created_by=actor, created=now, expires=now + ttl))
    session.flush()
    return token


def enrol(session: Session, authority: Authority, token: str, public_hex: str) -> Device:
    """Spend ``token`` on the device with this public key (hex of the raw 32 bytes); the enrolled device."""
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError as exc:
        raise EnrolmentError("public_key must be the hex of a raw Ed25519 public key (32 bytes)") from exc
    found = session.scalar(select(EnrolmentToken).where(EnrolmentToken.digest == digest(token)).with_for_update())
    now = datetime.now(UTC)
    if found is None:
        raise EnrolmentError("unknown enrolment token")
    if found.used is not None:
        raise EnrolmentError("this enrolment token was used already (tokens are single-use)")
    if found.expires <= now:
        raise EnrolmentError(f"this enrolment token expired at {found.expires:%Y-%m-%d %H:%M} UTC")
    device_id = device_id_of(bytes.fromhex(public_hex))
    device = session.get(Device, device_id)
    if device is not None and device.revoked is not None:
        raise EnrolmentError(f"device {device_id} was revoked: its key cannot enrol again")
    cert = authority.issue(public, device_id, found.group)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    if device is None:
        device = Device(id=device_id, public_key=public_hex.lower(), certificate=pem, serial=f"{cert.serial_number:x}",
                        group=found.group, tags={"tags": []}, enrolled=now, report={})
        session.add(device)
    else:  # enrolled again (a new token, e.g. after its certificate was lost): a new certificate
        device.certificate, device.serial = pem, f"{cert.serial_number:x}"
        device.group = found.group or device.group
    found.used, found.used_by = now, device_id
    session.flush()
    return device
