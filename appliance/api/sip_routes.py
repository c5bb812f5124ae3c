"""The phone's state over HTTP: calls in progress, registrations, counters (for `appliance sip status`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from appliance.api.auth import require_key
from appliance.api.context import ApiServices
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body

router = APIRouter(tags=["sip"])


@router.get("/v1/sip/status")
async def status(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    """Listening address, live calls, registrations and call counters."""
    services: ApiServices = request.app.state.services
    if services.sip is None:
        raise HTTPException(404, error_body("SIP is not running in this service (sip.enabled is false, or the "
                                            "phone is restarting)", "invalid_request_error", "sip_disabled"))
    return services.sip.status()
