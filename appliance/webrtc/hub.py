"""The open WebRTC sessions, bounded. Importing this is cheap: aiortc and PyAV load with the first offer, so the
API (and every boot of the appliance) does not pay for them until a browser calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.sessions import SessionSpec
    from appliance.voice.stack import VoiceStack
    from appliance.webrtc.peer import WebRtcSession


class CapacityError(ApplianceError):
    """Every session slot is taken."""


class WebRtcHub:
    """The open sessions, bounded: a new offer beyond ``max_sessions`` is refused rather than starving the rest."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.sessions: dict[str, WebRtcSession] = {}

    async def offer(self, stack: VoiceStack, spec: SessionSpec, sdp: str, kind: str) -> WebRtcSession:
        if len(self.sessions) >= self.max_sessions:
            raise CapacityError(f"all {self.max_sessions} sessions are in use; retry shortly")
        from appliance.webrtc.peer import WebRtcSession

        session = WebRtcSession(stack, spec, self._forget)
        self.sessions[session.id] = session
        try:
            await session.answer(sdp, kind)
        except BaseException:
            await session.close()
            raise
        return session

    def _forget(self, session: WebRtcSession) -> None:
        self.sessions.pop(session.id, None)

    async def hangup(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        await session.close()
        return True

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
