"""The kiosk page: sign in once with an API key or a one-time sign-in link (the key kept in an HttpOnly,
SameSite=Strict cookie), then the page, its assets and its config. Everything but signing in needs the key;
nothing is loaded from elsewhere.

Signing in returns to the page that asked for it, query included, so a preset such as
``/kiosk?mode=interpret&language=es&target=en`` survives the sign-in. That return address travels in the form
as ``next`` and is only ever ``/kiosk`` with a re-encoded query on this host: never an open redirect.
"""

from __future__ import annotations

import html
import mimetypes
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.api.auth import KEY_COOKIE, require_key
from appliance.api.context import ApiServices
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body
from appliance.kiosk import STATIC
from appliance.sessions import offered_pairs

router = APIRouter(tags=["kiosk"])
ASSETS = {"index.html", "kiosk.js", "kiosk.css"}
PAGE = "/kiosk"  # the only place sign-in sends a browser back to
_FIELD = re.compile(r"\{(error|next)\}")  # the login page's placeholders


def _return_to(target: str) -> str:
    """Where sign-in may send the browser: ``/kiosk`` with ``target``'s query, re-encoded; anything else (another
    host, scheme or path, ``//host``, ``/\\host``) gives the bare page."""
    try:
        parts = urlsplit(target)
    except ValueError:
        return PAGE
    if parts.scheme or parts.netloc or parts.path != PAGE:
        return PAGE
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    return f"{PAGE}?{query}" if query else PAGE


def _login_page(error: str = "", status: int = 200, next_url: str = PAGE) -> HTMLResponse:
    fields = {"error": error, "next": _return_to(next_url)}
    template = (STATIC / "login.html").read_text(encoding="utf-8")
    page = _FIELD.sub(lambda m: html.escape(fields[m[1]]), template)
    style = (STATIC / "kiosk.css").read_text(encoding="utf-8")  # inline: assets need the key
    page = page.replace('<link rel="stylesheet" href="/kiosk/static/kiosk.css">', f"<style>{style}</style>")
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/kiosk", response_class=HTMLResponse, include_in_schema=False)
async def kiosk(request: Request) -> Response:
    services: ApiServices = request.app.state.services
    key, reason = services.keys.check(request.cookies.get(KEY_COOKIE, ""))
    if key is None or reason:
        return _login_page(next_url=f"{PAGE}?{request.url.query}")
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


@router.post("/kiosk/login", include_in_schema=False)
async def login(request: Request, key: str = Form(""), next_url: str = Form(PAGE, alias="next")) -> Response:
    services: ApiServices = request.app.state.services
    client = request.client.host if request.client else "unknown"
    if services.limiter.take(f"login:{client}"):
        return _login_page("Too many attempts; wait a minute.", 429, next_url)
    found, reason = services.keys.check(key.strip())
    if found is None or reason:
        return _login_page("That key is not valid on this device." if found is None else "That key was revoked.",
                           401, next_url)
    return _signed_in(request, key.strip(), next_url)


def _signed_in(request: Request, token: str, next_url: str) -> Response:
    response = RedirectResponse(_return_to(next_url), status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(KEY_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.get("/kiosk/login", include_in_schema=False)
async def login_link(request: Request, code: str = "", next_url: str = Query(PAGE, alias="next")) -> Response:
    """A one-time sign-in link (``appliance keys link``): the code is spent and the browser gets a new key of
    the link's name in its cookie. How the device's own screen signs in without anyone typing a key."""
    services: ApiServices = request.app.state.services
    client = request.client.host if request.client else "unknown"
    if services.limiter.take(f"login:{client}"):
        return _login_page("Too many attempts; wait a minute.", 429, next_url)
    redeemed = services.keys.redeem(code.strip()) if code else None
    if redeemed is None:
        return _login_page("That sign-in link was used already or has expired.", 401, next_url)
    return _signed_in(request, redeemed[1], next_url)


@router.post("/kiosk/logout", include_in_schema=False)
async def logout() -> Response:
    response = RedirectResponse(PAGE, status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/")
    return response


@router.get("/kiosk/static/{name}", include_in_schema=False)
async def asset(name: str, key: ApiKey = Depends(require_key)) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, error_body(f"no kiosk asset {name}", "invalid_request_error", "not_found"))
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response((STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/kiosk/config")
async def config(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, object]:
    """What the page offers: the interpretation pairs this device can serve and the session modes."""
    services: ApiServices = request.app.state.services
    return {"pairs": offered_pairs(services.ready_stack()), "modes": ["interpret", "echo", "transcribe"]}
