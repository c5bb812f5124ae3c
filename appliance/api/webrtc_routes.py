"""WebRTC signalling over HTTP: POST an SDP offer with the session's mode, get the answer; DELETE to hang up."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from appliance.api.auth import require_key
from appliance.api.context import ApiServices
from appliance.api.keys import ApiKey
from appliance.api.limits import error_body
from appliance.errors import ApplianceError
from appliance.sessions import SessionSpec
from appliance.webrtc.hub import CapacityError

router = APIRouter(tags=["webrtc"])


class Offer(SessionSpec):
    sdp: str
    type: str = "offer"


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    session: str


@router.post("/v1/webrtc/offer")
async def offer(body: Offer, request: Request, key: ApiKey = Depends(require_key)) -> Answer:
    """Answer a browser's or client's offer; the client opens a data channel for captions and events."""
    services: ApiServices = request.app.state.services
    stack = services.ready_stack()
    try:
        session = await services.webrtc.offer(stack, body, body.sdp, body.type)
    except CapacityError as exc:
        raise HTTPException(503, error_body(str(exc), "server_error", "capacity"), headers={"Retry-After": "5"}) \
            from None
    except ApplianceError as exc:
        raise HTTPException(400, error_body(str(exc), "invalid_request_error", "invalid_offer")) from None
    return Answer(sdp=session.pc.localDescription.sdp, session=session.id)


@router.delete("/v1/webrtc/sessions/{session_id}", status_code=204)
async def hangup(session_id: str, request: Request, key: ApiKey = Depends(require_key)) -> Response:
    services: ApiServices = request.app.state.services
    if not await services.webrtc.hangup(session_id):
        raise HTTPException(404, error_body(f"no live session {session_id}", "invalid_request_error", "not_found"))
    return Response(status_code=204)
