"""The kiosk page: sign in once with an API key (kept in an HttpOnly, SameSite=Strict cookie), then the page,
its assets and its config. Everything but the sign-in form needs the key; nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import mimetypes

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.api.app import KEY_COOKIE, ApiServices, require_key
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body
from appliance.bot.modes import offered_pairs
from appliance.kiosk import STATIC

router = APIRouter(tags=["kiosk"])
ASSETS = {"index.html", "kiosk.js", "kiosk.css"}


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    page = (STATIC / "login.html").read_text(encoding="utf-8").replace("{error}", html.escape(error))
    style = (STATIC / "kiosk.css").read_text(encoding="utf-8")  # inline: assets need the key
    page = page.replace('<link rel="stylesheet" href="/kiosk/static/kiosk.css">', f"<style>{style}</style>")
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/kiosk", response_class=HTMLResponse, include_in_schema=False)
async def kiosk(request: Request) -> Response:
    services: ApiServices = request.app.state.services
    key, reason = services.keys.check(request.cookies.get(KEY_COOKIE, ""))
    if key is None or reason:
        return _login_page()
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


@router.post("/kiosk/login", include_in_schema=False)
async def login(request: Request, key: str = Form("")) -> Response:
    services: ApiServices = request.app.state.services
    client = request.client.host if request.client else "unknown"
    if services.limiter.take(f"login:{client}"):
        return _login_page("Too many attempts; wait a minute.", 429)
    found, reason = services.keys.check(key.strip())
    if found is None or reason:
        return _login_page("That key is not valid on this device." if found is None else "That key was revoked.",
                           401)
    response = RedirectResponse("/kiosk", status_code=303)
    response.set_cookie(KEY_COOKIE, key.strip(), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/kiosk/logout", include_in_schema=False)
async def logout() -> Response:
    response = RedirectResponse("/kiosk", status_code=303)
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
