"""The console's users and their credentials: roles (viewer < operator < admin), passwords hashed with argon2
(argon2-cffi's defaults, re-hashed when those change), and bearer tokens (API clients and browser sessions)
kept only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.console.schema import ApiToken, User
from appliance.errors import ApplianceError

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may
MIN_PASSWORD = 12
TOKEN_PREFIX = "ct_"
_hasher = PasswordHasher()
_DUMMY = _hasher.hash(secrets.token_hex(16))  # verified when the user does not exist: the same time either way


class AccountError(ApplianceError):
    """A user or token cannot be made as asked; the message says why."""


def rank(role: str) -> int:
    return ROLES.index(role)


def now() -> datetime:
    return datetime.now(UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add_user(session: Session, name: str, role: str, password: str) -> User:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AccountError(f"user name {name!r}: 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise AccountError(f"user {name!r} exists")
    user = User(name=name, role=role, password_hash=_hasher.hash(password), created=now())
    session.add(user)
    session.flush()
    return user


def check_password(session: Session, name: str, password: str) -> User | None:
    """The user whose password this is (and who is not disabled), else None."""
    user = session.scalar(select(User).where(User.name == name))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def issue_token(session: Session, user: User, label: str, ttl: timedelta | None = None) -> str:
    """A new bearer token for ``user`` (shown once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, digest=digest(token), label=label[:64], created=now(),
                         expires=now() + ttl if ttl else None))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    found = session.scalar(select(ApiToken).where(ApiToken.digest == digest(token)))
    if found is None or found.revoked or (found.expires is not None and found.expires <= now()):
        return None
    user = session.get(User, found.user_id)
    return None if user is None or user.disabled else user


def revoke_token(session: Session, token: str) -> None:
    found = session.scalar(select(ApiToken).where(ApiToken.digest == digest(token)))
    if found is not None:
        found.revoked = True
