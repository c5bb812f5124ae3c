"""The console's HTTP app (FastAPI): its JSON API below, its pages (``pages``) and their static files. Every
route needs authentication except ``/health``, the sign-in page and the static files (``/metrics``, the
fleet's telemetry for Prometheus federation, takes a viewer's bearer token):

- people and API clients: ``Authorization: Bearer ct_…`` (from ``POST /api/v1/login`` or
  ``appliance console token``), each route gated by a role (viewer < operator < admin);
- devices: ``POST /api/v1/enrol`` with a one-time enrolment token, then requests signed with the device key
  (``appliance.fleet.identity``); a revoked device is refused at its next request.

Every admin action is written to the audit log in the same transaction as the action."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.console import accounts, audit, pages, rollouts, telemetry
from appliance.console.authority import Authority, EnrolmentError, enrol, make_token
from appliance.console.inventory import device_view, release_view, rollout_view, search
from appliance.console.repository import Published, RepositoryLinkError, unpublished
from appliance.console.schema import Device, Release, Rollout, User
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


log = logging.getLogger(__name__)
JUDGED = ("running", "paused", "approval", "halted")  # rollouts whose devices' reports are still judged
DEFAULT_WAVES: tuple[int | str, ...] = (1, "50%", "100%")  # a canary, half the group, the rest


class NewRelease(BaseModel):
    name: str = Field(..., min_length=1, max_length=64)
    targets: dict[Literal["model", "config", "firmware"], dict[str, int]]


class NewRollout(BaseModel):
    release: str
    group: str
    waves: list[int | str] = Field(default_factory=lambda: list(DEFAULT_WAVES), min_length=1, max_length=20)
    failure_threshold: float = Field(0.2, ge=0, lt=1)
    deadline_s: int = Field(3600, ge=10, le=7 * 86400)
    approval: bool = False


class Placement(BaseModel):
    group: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=32)


def db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session, session.begin():
        yield session


Db = Annotated[Session, Depends(db)]


def role(needed: str) -> Callable[..., User]:
    def check(request: Request) -> User:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get("console", "")
        user = None
        if token:  # a session of its own, closed here: no connection is held while the route waits for a thread
            with request.app.state.sessions() as session:
                user = accounts.user_for_token(session, token)
        if user is None:
            raise HTTPException(401, "sign in: a bearer token is needed", {"WWW-Authenticate": "Bearer"})
        if accounts.rank(user.role) < accounts.rank(needed):
            raise HTTPException(403, f"this needs the {needed} role; {user.name} is {user.role}")
        return user
    return check


Viewer = Annotated[User, Depends(role("viewer"))]
Operator = Annotated[User, Depends(role("operator"))]
Admin = Annotated[User, Depends(role("admin"))]


T = TypeVar("T")


async def as_device(request: Request, work: Callable[[Session, Device, bytes], T]) -> T:
    """Authenticate the device that signed this request and do ``work`` for it, all in one call on the thread
    pool with one session: a request never holds a database connection while it waits for a thread (the
    deadlock of a pool smaller than the number of waiting requests), and the event loop never touches the
    database."""
    body = await request.body()
    headers, method = dict(request.headers), request.method
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")

    def call() -> T:
        with request.app.state.sessions() as session, session.begin():
            device = session.get(Device, headers.get(DEVICE.lower(), ""))
            if device is None:
                raise HTTPException(401, "unknown device: enrol first")
            if device.revoked is not None:
                raise HTTPException(403, f"device {device.id} is revoked")
            try:
                verify(device.public_key, headers, method, target, body)
            except IdentityError as exc:
                raise HTTPException(401, str(exc)) from exc
            return work(session, device, body)

    return await run_in_threadpool(call)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return value


def advance(session: Session, device: Device | None = None) -> None:
    """Tick the rollouts of the device's group for that device (its report may finish its part), or every
    rollout for all its devices (deadlines pass without reports), auditing what happened."""
    query = select(Rollout).where(Rollout.state.in_(JUDGED))
    for found in session.scalars((query if device is None else query.where(Rollout.group == device.group))
                                 .with_for_update()):
        for line in rollouts.tick(session, found, device_id=None if device is None else device.id):
            audit.record(session, "console", "rollout.progress", f"rollout:{found.id}", what=line)


def make_app(sessions: sessionmaker[Session], authority: Authority, tick_s: float = 15.0,
             published: Published | None = None) -> FastAPI:
    """The console; every ``tick_s`` its rollouts are judged again (a silent device's deadline passes) and,
    with a repository, its timestamp is kept fresh."""

    def tick_all() -> None:
        with sessions() as session, session.begin():
            advance(session)
            if published is not None:
                try:
                    signed = published.refresh()
                except RepositoryLinkError as exc:
                    log.error("%s", exc)
                    return
                if signed:
                    audit.record(session, "console", "repository.refresh", "repository",
                                 snapshot=signed[0], timestamp=signed[1])

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            try:
                await asyncio.to_thread(tick_all)
            except Exception:  # the database away for a moment: the next tick tries again
                log.exception("judging the rollouts failed")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker())
        yield
        task.cancel()

    app = FastAPI(title="appliance fleet console", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.sessions, app.state.authority, app.state.published = sessions, authority, published
    registry = CollectorRegistry()
    registry.register(telemetry.FleetCollector(sessions))

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
    async def report(request: Request) -> None:
        def work(session: Session, device: Device, body: bytes) -> None:
            device.report, device.last_seen = _json(body), datetime.now(UTC)
            session.flush()
            if device.group is not None:
                advance(session, device)
        await as_device(request, work)

    @app.post("/api/v1/device/telemetry", status_code=204)
    async def device_telemetry(request: Request) -> None:
        def work(session: Session, device: Device, body: bytes) -> None:
            telemetry.store(session, device, _json(body))
            device.last_seen = datetime.now(UTC)
        await as_device(request, work)

    @app.get("/metrics")
    def metrics(_: Viewer) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/device/assignment")
    async def device_assignment(request: Request) -> dict[str, Any]:
        return await as_device(request, lambda session, device, _: rollouts.assignment(session, device))

    @app.post("/api/v1/releases", status_code=201)
    def new_release(request: Request, body: NewRelease, operator: Operator, session: Db) -> dict[str, Any]:
        if session.scalar(select(Release).where(Release.name == body.name)) is not None:
            raise HTTPException(409, f"release {body.name!r} exists")
        missing = unpublished(request.app.state.published, {str(k): v for k, v in body.targets.items()})
        if missing:
            raise HTTPException(409, "; ".join(missing))
        release = Release(name=body.name, targets=dict(body.targets), created=datetime.now(UTC),
                          created_by=operator.name)
        session.add(release)
        session.flush()
        audit.record(session, operator.name, "release.add", f"release:{body.name}", targets=release.targets)
        return release_view(release)

    @app.get("/api/v1/releases")
    def releases(_: Viewer, session: Db) -> list[dict[str, Any]]:
        return [release_view(r) for r in session.scalars(select(Release).order_by(Release.id.desc()))]

    @app.post("/api/v1/rollouts", status_code=201)
    def new_rollout(body: NewRollout, operator: Operator, session: Db) -> dict[str, Any]:
        release = session.scalar(select(Release).where(Release.name == body.release))
        if release is None:
            raise HTTPException(404, f"no release {body.release!r}")
        try:
            rollout = rollouts.start(session, release, body.group, body.waves, operator.name,
                                     body.failure_threshold, body.deadline_s, body.approval)
        except rollouts.RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc
        audit.record(session, operator.name, "rollout.start", f"rollout:{rollout.id}", release=body.release,
                     group=body.group, waves=body.waves, failure_threshold=body.failure_threshold)
        return rollout_view(session, rollout)

    @app.get("/api/v1/rollouts")
    def rollout_list(_: Viewer, session: Db) -> list[dict[str, Any]]:
        return [rollout_view(session, r) for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))]

    @app.get("/api/v1/rollouts/{rollout_id}")
    def rollout(rollout_id: int, _: Viewer, session: Db) -> dict[str, Any]:
        found = session.get(Rollout, rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return rollout_view(session, found, full=True)

    @app.post("/api/v1/rollouts/{rollout_id}/{action}")
    def rollout_action(rollout_id: int, action: str, operator: Operator, session: Db) -> dict[str, Any]:
        found = session.get(Rollout, rollout_id, with_for_update=True)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        try:
            rollouts.act(session, found, action)
        except rollouts.RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc
        audit.record(session, operator.name, f"rollout.{action}", f"rollout:{rollout_id}")
        for line in rollouts.tick(session, found):
            audit.record(session, "console", "rollout.progress", f"rollout:{rollout_id}", what=line)
        return rollout_view(session, found)

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

    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(pages.HERE / "static")), name="static")

    @app.exception_handler(pages.SignIn)
    def sign_in_first(_: Request, __: pages.SignIn) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(EnrolmentError)
    def enrolment_refused(_: Request, exc: EnrolmentError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    return app
