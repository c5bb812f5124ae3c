"""Who may use the API: an API key presented as 'Authorization: Bearer <key>' or as the kiosk's sign-in cookie
(or, for a WebSocket, whose browser API cannot set headers, the ``access_token`` query parameter), and the
per-key rate limit. One reading of a key for the HTTP routes, the realtime WebSocket and /health's full view.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from appliance.api.context import services_of
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body

KEY_COOKIE = "appliance_key"  # set by the kiosk's sign-in form; the same key as a Bearer token


class AuthError(Exception):
    """A refused connection: HTTP status, message, error code and headers (WWW-Authenticate, Retry-After)."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers

    def http(self) -> HTTPException:
        kind = "rate_limit_error" if self.status == 429 else "invalid_request_error"
        return HTTPException(self.status, error_body(self.message, kind, self.code), headers=self.headers)


def presented_token(connection: HTTPConnection, query: bool = False) -> str | None:
    """The key a request presents: 'Authorization: Bearer <key>', else the kiosk's sign-in cookie, else (for a
    WebSocket, ``query=True``) the ``access_token`` query parameter."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and connection.cookies.get(KEY_COOKIE):
        scheme, token = "bearer", connection.cookies[KEY_COOKIE]
    if not header and not token and query and connection.query_params.get("access_token"):
        scheme, token = "bearer", connection.query_params["access_token"]
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def valid_key(connection: HTTPConnection) -> bool:
    """A valid, unrevoked key is presented (no rate limit taken: for /health's full view)."""
    token = presented_token(connection)
    key, reason = services_of(connection).keys.check(token) if token else (None, "")
    return key is not None and reason != "revoked"


def authenticate(connection: HTTPConnection, query: bool = False) -> ApiKey:
    """The presented key, checked and counted against its rate limit; AuthError saying why not."""
    services = services_of(connection)
    token = presented_token(connection, query)
    if token is None:
        raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>' (create one with "
                             "`appliance keys create NAME`)", "missing_key", {"WWW-Authenticate": "Bearer"})
    key, reason = services.keys.check(token)
    if key is None:
        raise AuthError(401, "invalid API key", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
    if reason == "revoked":
        raise AuthError(403, f"API key {key.id} ({key.name}) was revoked", "revoked_key")
    wait = services.limiter.take(key.id)
    if wait:
        raise AuthError(429, f"rate limit of {services.settings.rate_per_minute} requests per minute exceeded",
                        "rate_limited", {"Retry-After": str(max(1, round(wait)))})
    return key


def require_key(request: Request) -> ApiKey:
    """The routes' dependency: Bearer (or cookie) authentication and the per-key rate limit."""
    try:
        return authenticate(request)
    except AuthError as exc:
        raise exc.http() from None
