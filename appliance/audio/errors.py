"""The error raised for audio a user supplied that cannot be used: bad file, bad format, bad parameters."""

from __future__ import annotations

from appliance.errors import ApplianceError


class AudioError(ApplianceError):
    """Audio input or parameters the appliance cannot use; the message says what is wrong and the fix."""
