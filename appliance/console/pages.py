"""The console's web pages, rendered on the server (Jinja2; one stylesheet and one small script of our own, no
CDN): sign-in, the fleet overview with filters, a device's page, rollouts with per-wave progress that updates
live (the page polls the rollout's JSON) and the halt reason, enrolment tokens and the audit log.

A browser signs in with a user's password and gets a session token in an HttpOnly, SameSite=Strict cookie;
every form carries a CSRF token derived from that session token, and a form without the right one is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.console import accounts, audit, rollouts, telemetry
from appliance.console.authority import make_token
from appliance.console.inventory import device_view, release_view, rollout_view, search
from appliance.console.repository import unpublished
from appliance.console.schema import AuditEntry, Device, DeviceEvent, Release, Rollout, User

HERE = Path(__file__).resolve().parent
COOKIE = "console"
SESSION = timedelta(hours=12)
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter()


def csrf_of(token: str) -> str:
    return hmac.new(b"console-csrf", token.encode(), hashlib.sha256).hexdigest()[:32]


class SignIn(Exception):
    """No signed-in user: the page handler answers with a redirect to /login."""


def _session(request: Request) -> Session:
    session: Session = request.app.state.sessions()
    return session


def _user(request: Request, session: Session, needed: str = "viewer") -> tuple[User, str]:
    token = request.cookies.get(COOKIE, "")
    user = accounts.user_for_token(session, token) if token else None
    if user is None:
        raise SignIn()
    if accounts.rank(user.role) < accounts.rank(needed):
        raise HTTPException(403, f"this needs the {needed} role; {user.name} is {user.role}")
    return user, token


async def form_of(request: Request) -> dict[str, str]:
    """The posted form (read on the event loop; the handlers that take it are sync and run on the thread pool,
    so the database is never used on the loop)."""
    return {key: str(value) for key, value in (await request.form()).items()}


Form = Annotated[dict[str, str], Depends(form_of)]


def _csrf(form: dict[str, str], token: str) -> dict[str, str]:
    if not hmac.compare_digest(form.get("csrf", ""), csrf_of(token)):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


def _page(request: Request, name: str, user: User | None, token: str = "", status: int = 200,
          **context: Any) -> HTMLResponse:
    context.setdefault("title", name.split(".")[0].capitalize())
    return templates.TemplateResponse(request, name, {"user": user, "csrf": csrf_of(token) if token else "",
                                                      **context}, status_code=status)


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", None, title="Sign in")


@router.post("/login")
def login(request: Request, form: Form) -> Response:
    with _session(request) as session, session.begin():
        user = accounts.check_password(session, form.get("name", ""), form.get("password", ""))
        if user is None:
            return _page(request, "login.html", None, status=401, error="Wrong user name or password.",
                         title="Sign in")
        token = accounts.issue_token(session, user, "browser", SESSION)
        audit.record(session, user.name, "login", f"user:{user.name}", via="browser")
    answer = _back("/")
    answer.set_cookie(COOKIE, token, max_age=int(SESSION.total_seconds()), httponly=True, samesite="strict",
                      secure=request.url.scheme == "https")
    return answer


@router.post("/logout")
def logout(request: Request, form: Form) -> Response:
    with _session(request) as session, session.begin():
        _, token = _user(request, session)
        _csrf(form, token)
        accounts.revoke_token(session, token)
    answer = _back("/login")
    answer.delete_cookie(COOKIE)
    return answer


@router.get("/", response_class=HTMLResponse)
def fleet(request: Request, q: str = "", group: str | None = None, tag: str | None = None) -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session)
        devices = [device_view(d) for d in search(session, q, group or None, tag or None)]
        everyone = [device_view(d) for d in search(session)]
        recent = (datetime.now(UTC) - timedelta(minutes=15)).isoformat()
        summary = {"devices": sum(not d["revoked"] for d in everyone),
                   "seen": sum(bool(d["last_seen"] and d["last_seen"] >= recent) for d in everyone),
                   "unhealthy": sum(bool(d["health"] and d["health"] != "ok" and not d["revoked"]) for d in everyone),
                   "calls": sum(int(d["calls"] or 0) for d in everyone),
                   "rollouts": len(list(session.scalars(select(Rollout.id).where(Rollout.state.in_(rollouts.ACTIVE)))))}
        return _page(request, "fleet.html", user, token, devices=devices, summary=summary, q=q, group=group,
                     tag=tag, title="Fleet")


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, device_id: str) -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session)
        found = session.get(Device, device_id)
        if found is None:
            raise HTTPException(404, f"no device {device_id}")
        view = device_view(found, full=True)
        events = list(session.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                                      .order_by(DeviceEvent.id.desc()).limit(50)))
        return _page(request, "device.html", user, token, device=view, report=json.dumps(view["report"], indent=2),
                     charts=telemetry.charts(session, device_id), events=events, title=f"Device {device_id}")


@router.post("/devices/{device_id}/{action}")
def device_action(request: Request, device_id: str, action: str, form: Form) -> Response:
    with _session(request) as session, session.begin():
        user, token = _user(request, session, "admin" if action == "revoke" else "operator")
        _csrf(form, token)
        found = session.get(Device, device_id)
        if found is None or action not in ("placement", "revoke"):
            raise HTTPException(404, f"no device {device_id} or no action {action}")
        if action == "revoke" and found.revoked is None:
            found.revoked = datetime.now(UTC)
            audit.record(session, user.name, "device.revoke", f"device:{device_id}", serial=found.serial)
        elif action == "placement":
            tags = sorted({t.strip() for t in form.get("tags", "").split(",") if t.strip()})
            found.group, found.tags = form.get("group", "").strip() or None, {"tags": tags}
            audit.record(session, user.name, "device.place", f"device:{device_id}", group=found.group, tags=tags)
    return _back(f"/devices/{device_id}")


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request, error: str = "") -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session)
        listed = [rollout_view(session, r) for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))]
        releases = [release_view(r) for r in session.scalars(select(Release).order_by(Release.id.desc()))]
        return _page(request, "rollouts.html", user, token, rollouts=listed, releases=releases, error=error,
                     title="Rollouts")


def parse_targets(text: str) -> dict[str, dict[str, int]]:
    """``kind name version`` per line into a release's targets; ValueError saying which line is wrong."""
    targets: dict[str, dict[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        words = line.split()
        if len(words) != 3 or words[0] not in ("model", "config", "firmware") or not words[2].isdigit():
            raise ValueError(f"line {number}: write 'model|config|firmware NAME VERSION', not {line.strip()!r}")
        targets.setdefault(words[0], {})[words[1]] = int(words[2])
    if not targets:
        raise ValueError("a release needs at least one target")
    return targets


@router.post("/releases")
def add_release(request: Request, form: Form) -> Response:
    with _session(request) as session, session.begin():
        user, token = _user(request, session, "operator")
        _csrf(form, token)
        name = form.get("name", "").strip()
        try:
            targets = parse_targets(form.get("targets", ""))
        except ValueError as exc:
            return _back(f"/rollouts?error={exc}")
        missing = unpublished(request.app.state.published, targets)
        if missing:
            return _back(f"/rollouts?error={'; '.join(missing)}")
        if not name or session.scalar(select(Release).where(Release.name == name)) is not None:
            return _back(f"/rollouts?error=release name {name!r} is empty or taken")
        session.add(Release(name=name, targets=targets, created=datetime.now(UTC), created_by=user.name))
        audit.record(session, user.name, "release.add", f"release:{name}", targets=targets)
    return _back("/rollouts")


@router.post("/rollouts")
def start_rollout(request: Request, form: Form) -> Response:
    with _session(request) as session, session.begin():
        user, token = _user(request, session, "operator")
        _csrf(form, token)
        release = session.scalar(select(Release).where(Release.name == form.get("release", "")))
        try:
            if release is None:
                raise rollouts.RolloutError(f"no release {form.get('release')!r}")
            waves: list[int | str] = [w.strip() if w.strip().endswith("%") else int(w)
                                      for w in form.get("waves", "").split(",") if w.strip()]
            started = rollouts.start(session, release, form.get("group", "").strip(), waves, user.name,
                                     float(form.get("failure_threshold", "20")) / 100,
                                     int(form.get("deadline_s", "3600")), form.get("approval") == "1")
        except (rollouts.RolloutError, ValueError) as exc:
            return _back(f"/rollouts?error={exc}")
        audit.record(session, user.name, "rollout.start", f"rollout:{started.id}", release=release.name,
                     group=started.group, waves=waves)
    return _back(f"/rollouts/{started.id}")


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: int, error: str = "") -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session)
        found = session.get(Rollout, rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return _page(request, "rollout.html", user, token, rollout=rollout_view(session, found, full=True),
                     error=error, title=f"Rollout {rollout_id}")


@router.post("/rollouts/{rollout_id}/action")
def rollout_action(request: Request, rollout_id: int, form: Form) -> Response:
    with _session(request) as session, session.begin():
        user, token = _user(request, session, "operator")
        _csrf(form, token)
        found = session.get(Rollout, rollout_id, with_for_update=True)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        try:
            rollouts.act(session, found, form.get("action", ""))
        except rollouts.RolloutError as exc:
            return _back(f"/rollouts/{rollout_id}?error={exc}")
        audit.record(session, user.name, f"rollout.{form['action']}", f"rollout:{rollout_id}")
        for line in rollouts.tick(session, found):
            audit.record(session, "console", "rollout.progress", f"rollout:{rollout_id}", what=line)
    return _back(f"/rollouts/{rollout_id}")


@router.get("/enrol", response_class=HTMLResponse)
def enrol_page(request: Request) -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session, "admin")
        return _page(request, "enrol.html", user, token, title="Enrol")


@router.post("/enrol", response_class=HTMLResponse)
def enrol_token(request: Request, form: Form) -> HTMLResponse:
    with _session(request) as session, session.begin():
        user, token = _user(request, session, "admin")
        _csrf(form, token)
        group = form.get("group", "").strip() or None
        try:
            hours = min(720.0, max(0.05, float(form.get("hours", "24"))))
        except ValueError:
            hours = 24.0
        made = make_token(session, user.name, group, timedelta(hours=hours))
        audit.record(session, user.name, "enrolment-token.add", f"group:{group or '-'}", hours=hours)
        return _page(request, "enrol.html", user, token, enrolment=made, hours=hours, title="Enrol",
                     console_url=str(request.base_url).rstrip("/"))


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> HTMLResponse:
    with _session(request) as session:
        user, token = _user(request, session, "admin")
        entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(300)))
        return _page(request, "audit.html", user, token, entries=entries, problems=audit.check(session),
                     title="Audit")
