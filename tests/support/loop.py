"""`checked_run()`: asyncio.run for tests, with asyncio's debug mode on, so that a callback or a task step that holds
the event loop (a blocking call where a worker thread belongs) fails the test instead of slowing every call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
SLOW_S = 0.1  # a step longer than this blocks every other call and session on the loop


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.slow: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and " took " in message:
            self.slow.append(message)


def checked_run(main: Coroutine[Any, Any, T], slow_s: float = SLOW_S) -> T:
    """Run ``main`` on a new loop in debug mode; AssertionError naming each step that held the loop > slow_s."""
    collect = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collect)

    async def watched() -> T:
        asyncio.get_running_loop().slow_callback_duration = slow_s
        return await main

    try:
        result = asyncio.run(watched(), debug=True)
    finally:
        logger.removeHandler(collect)
    assert not collect.slow, "the event loop was blocked: " + "; ".join(collect.slow)
    return result
