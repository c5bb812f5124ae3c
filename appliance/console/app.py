"""The console's HTTP app (FastAPI). Every route needs authentication except ``/health``:

- people and API clients: ``Authorization: Bearer ct_…`` (from ``POST /api/v1/login`` or
  ``appliance console token``), each route gated by a role (viewer < operator < admin);
- devices: ``POST /api/v1/enrol`` with a one-time enrolment token, then requests signed with the device key
  (``appliance.fleet.identity``); a revoked device is refused at its next request.

Every admin action is written to the audit log in the same transaction as the action."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.console import accounts, audit
from appliance.console.authority import Authority, EnrolmentError, enrol, make_token
from appliance.console.inventory import device_view, search
from appliance.console.schema import Device, User
from appliance.fleet.identity import DEVICE, IdentityError, verify


class Login(BaseModel):
    name: str
    password: str


class NewUser(BaseModel):
    name: str
    role: str
    password: str


class NewEnrolmentToken(BaseModel):
    group: str | None = Field(None, max_length=64)
    ttl_s: int = Field(86400, ge=60, le=30 * 86400)


class Enrol(BaseModel):
    token: str
    public_key: str


class Placement(BaseModel):
    group: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=32)


def db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session, session.begin():
        yield session


Db = Annotated[Session, Depends(db)]


def role(needed: str) -> Callable[..., User]:
    def check(request: Request, session: Db) -> User:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get("console", "")
        user = accounts.user_for_token(session, token) if token else None
        if user is None:
            raise HTTPException(401, "sign in: a bearer token is needed", {"WWW-Authenticate": "Bearer"})
        if accounts.rank(user.role) < accounts.rank(needed):
            raise HTTPException(403, f"this needs the {needed} role; {user.name} is {user.role}")
        return user
    return check


Viewer = Annotated[User, Depends(role("viewer"))]
Operator = Annotated[User, Depends(role("operator"))]
Admin = Annotated[User, Depends(role("admin"))]


async def signed_device(request: Request, session: Db) -> Device:
    body = await request.body()
    device = session.get(Device, request.headers.get(DEVICE, ""))
    if device is None:
        raise HTTPException(401, "unknown device: enrol first")
    if device.revoked is not None:
        raise HTTPException(403, f"device {device.id} is revoked")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        verify(device.public_key, dict(request.headers), request.method, target, body)
    except IdentityError as exc:
        raise HTTPException(401, str(exc)) from exc
    return device


SignedDevice = Annotated[Device, Depends(signed_device)]


def make_app(sessions: sessionmaker[Session], authority: Authority) -> FastAPI:
    app = FastAPI(title="appliance fleet console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions, app.state.authority = sessions, authority

    @app.get("/health")
    def health(session: Db) -> dict[str, str]:
        session.execute(select(1))
        return {"status": "ok"}

    @app.post("/api/v1/login")
    def login(body: Login, session: Db) -> dict[str, str]:
        user = accounts.check_password(session, body.name, body.password)
        if user is None:
            raise HTTPException(401, "wrong user name or password")
        audit.record(session, user.name, "login", f"user:{user.name}")
        return {"token": accounts.issue_token(session, user, "session", timedelta(hours=12)), "role": user.role}

    @app.post("/api/v1/users", status_code=201)
    def add_user(body: NewUser, admin: Admin, session: Db) -> dict[str, str]:
        try:
            user = accounts.add_user(session, body.name, body.role, body.password)
        except accounts.AccountError as exc:
            raise HTTPException(400, str(exc)) from exc
        audit.record(session, admin.name, "user.add", f"user:{user.name}", role=user.role)
        return {"name": user.name, "role": user.role}

    @app.get("/api/v1/users")
    def users(_: Admin, session: Db) -> list[dict[str, Any]]:
        return [{"name": u.name, "role": u.role, "disabled": u.disabled, "created": u.created.isoformat()}
                for u in session.scalars(select(User).order_by(User.name))]

    @app.post("/api/v1/enrolment-tokens", status_code=201)
    def new_enrolment_token(body: NewEnrolmentToken, admin: Admin, session: Db) -> dict[str, Any]:
        token = make_token(session, admin.name, body.group, timedelta(seconds=body.ttl_s))
        audit.record(session, admin.name, "enrolment-token.add", f"group:{body.group or '-'}", ttl_s=body.ttl_s)
        return {"token": token, "group": body.group, "expires_in_s": body.ttl_s}

    @app.post("/api/v1/enrol", status_code=201)
    def enrol_device(body: Enrol, session: Db) -> dict[str, str]:
        try:
            device = enrol(session, authority, body.token, body.public_key)
        except EnrolmentError as exc:
            raise HTTPException(401, str(exc)) from exc
        audit.record(session, f"device:{device.id}", "device.enrol", f"device:{device.id}", group=device.group)
        return {"device_id": device.id, "certificate": device.certificate, "ca": authority.pem}

    @app.post("/api/v1/device/report", status_code=204)
    def report(device: SignedDevice, body: dict[str, Any]) -> None:
        device.report, device.last_seen = body, datetime.now(UTC)

    @app.get("/api/v1/devices")
    def devices(_: Viewer, session: Db, q: str = "", group: str | None = None,
                tag: str | None = None) -> list[dict[str, Any]]:
        return [device_view(d) for d in search(session, q, group, tag)]

    @app.get("/api/v1/devices/{device_id}")
    def device(device_id: str, _: Viewer, session: Db) -> dict[str, Any]:
        found = session.get(Device, device_id)
        if found is None:
            raise HTTPException(404, f"no device {device_id}")
        return device_view(found, full=True)

    @app.post("/api/v1/devices/{device_id}/placement")
    def place(device_id: str, body: Placement, operator: Operator, session: Db) -> dict[str, Any]:
        found = session.get(Device, device_id)
        if found is None:
            raise HTTPException(404, f"no device {device_id}")
        found.group, found.tags = body.group, {"tags": sorted(set(body.tags))}
        audit.record(session, operator.name, "device.place", f"device:{device_id}", group=body.group,
                     tags=found.tags["tags"])
        return device_view(found)

    @app.post("/api/v1/devices/{device_id}/revoke")
    def revoke(device_id: str, admin: Admin, session: Db) -> dict[str, Any]:
        found = session.get(Device, device_id)
        if found is None:
            raise HTTPException(404, f"no device {device_id}")
        if found.revoked is None:
            found.revoked = datetime.now(UTC)
            audit.record(session, admin.name, "device.revoke", f"device:{device_id}", serial=found.serial)
        return device_view(found)

    @app.get("/api/v1/audit")
    def audit_log(_: Admin, session: Db, limit: int = 200) -> dict[str, Any]:
        from appliance.console.schema import AuditEntry

        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(min(limit, 1000)))
        return {"problems": audit.check(session),
                "entries": [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                             "subject": e.subject, "detail": e.detail} for e in rows]}

    @app.exception_handler(EnrolmentError)
    def enrolment_refused(_: Request, exc: EnrolmentError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    return app
