"""`VoiceModels`, the one answer to "are the voice models warm?" that every transport reads: warming, ready
or failed, waiters on any event loop, and the retry hint. Milliseconds: the stack is a stand-in object."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.voice.readiness import WARM_THREAD, ModelsNotReady, VoiceModels


def test_warming_then_ready_wakes_waiters_on_two_event_loops() -> None:
    release, stack = threading.Event(), SimpleNamespace(name="stack")

    def build() -> Any:
        assert release.wait(10)
        return stack

    models = VoiceModels(build)
    assert models.state == "warming" and models.current() is None
    with pytest.raises(ModelsNotReady, match="still loading; retry in 5 s") as raised:
        models.require()
    assert raised.value.retry_after_s == 5
    models.start()
    assert models.loading() and any(t.name == WARM_THREAD for t in threading.enumerate())

    other: list[Any] = []
    waiter = threading.Thread(target=lambda: other.append(asyncio.run(models.wait(10))))
    waiter.start()

    async def main() -> Any:
        with pytest.raises(ModelsNotReady):  # still warming after a short wait
            await models.wait(0.05)
        waiting = asyncio.create_task(models.wait(10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        release.set()
        return await waiting

    assert asyncio.run(main()) is stack
    waiter.join(10)
    assert other == [stack] and models.state == "ready" and models.require() is stack
    assert models.health() == {"ready": True, "error": None} and models.note() == "models ready"


def test_a_failed_load_is_kept_with_its_reason_and_no_retry_hint() -> None:
    def build() -> Any:
        raise RuntimeError("no runtime could run whisper-tiny-en")

    models = VoiceModels(build)
    asyncio.run(models.warm())  # the failure is kept, not raised
    assert models.state == "failed" and not models.loading()
    with pytest.raises(ModelsNotReady, match="could not be loaded: no runtime") as raised:
        asyncio.run(models.wait(10))
    assert raised.value.retry_after_s is None
    assert models.health() == {"ready": False, "error": "no runtime could run whisper-tiny-en"}
    assert models.note().startswith("models failed: no runtime")


def test_models_built_elsewhere_are_ready_at_once() -> None:
    stack = SimpleNamespace()
    models = VoiceModels.of(stack)  # type: ignore[arg-type]
    assert models.state == "ready" and asyncio.run(models.wait(0)) is stack
    models.start()  # nothing to build
    assert not models.loading()


def test_a_swap_serves_the_old_stack_until_the_new_one_is_built_and_a_failed_build_keeps_it() -> None:
    old, new = SimpleNamespace(name="v1"), SimpleNamespace(name="v2")
    models = VoiceModels.of(old)  # type: ignore[arg-type]
    building = threading.Event()
    finish = threading.Event()

    def build() -> Any:
        building.set()
        assert finish.wait(10)
        return new

    async def scenario() -> None:
        swap = asyncio.create_task(models.swap(build))
        await asyncio.to_thread(building.wait, 10)
        assert models.require() is old  # sessions starting meanwhile get the stack that works
        finish.set()
        assert await swap is old  # handed back for its owner to retire
        assert models.require() is new and models.state == "ready"

        def broken() -> Any:
            raise RuntimeError("no runtime could run the new version")

        with pytest.raises(RuntimeError, match="no runtime"):
            await models.swap(broken)
        assert models.require() is new

    asyncio.run(scenario())
