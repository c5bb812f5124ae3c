"""What a phone call looks like to an application, whichever transport carries it: the interface between the
two, depending on nothing above the audio layer.

The transport (SIP today) implements ``CallControl`` and drives a ``CallApp``: it feeds the caller's audio
(16 kHz mono float32) and key presses in, and plays what the app pushes into the speaker queue at the call's
rate. Applications (the call bot, a session mode, an announcement) live in ``appliance.bot``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from appliance.audio.queue import PcmQueue
from appliance.errors import ApplianceError


class NotReady(ApplianceError):
    """The device cannot take calls yet (models loading): the transport answers "busy, retry later"."""


@dataclass(frozen=True)
class CallInfo:
    call_id: str
    caller: str  # the From URI
    called: str  # the dialled user part (routes the call to a flow)


class CallControl(Protocol):
    info: CallInfo

    async def transfer(self, target: str) -> bool:
        """Hand the caller to ``target`` (a SIP URI or extension); True once the transfer succeeded."""
        ...

    async def hangup(self, reason: str) -> None: ...


class CallApp(Protocol):
    async def answered(self) -> None:
        """The call is up (ACK received): greet."""
        ...

    async def feed(self, samples: np.ndarray) -> None: ...
    async def dtmf(self, digit: str) -> None: ...
    async def close(self) -> None: ...


# Builds the app of one call: its control, the speaker queue the transport plays, and that queue's rate.
CallAppFactory = Callable[[CallControl, PcmQueue, int], Awaitable[CallApp]]
