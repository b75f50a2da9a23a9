"""within(): a time limit with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio

import pytest
from webhook_tasks_runtime.timeouts import within


async def answer_after(seconds: float, value: str = "done") -> str:
    await asyncio.sleep(seconds)
    return value


async def test_work_that_finishes_in_time_returns_its_result() -> None:
    assert await within(1.0, answer_after(0.01)) == "done"


async def test_work_that_does_not_finish_in_time_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        await within(0.02, answer_after(5))

    # The task is not left cancelling: it can go on awaiting.
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    assert await answer_after(0.001, "after") == "after"


async def test_work_that_fails_raises_its_own_error() -> None:
    async def fail() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await within(1.0, fail())


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def wait_long() -> None:
        started.set()
        await within(30, answer_after(30))

    task = asyncio.create_task(wait_long())
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_outside_at_expiry_stays_a_cancellation() -> None:
    async def wait_and_be_cancelled() -> None:
        current = asyncio.current_task()
        assert current is not None
        # Cancelled from outside in the same turn as the limit expires.
        asyncio.get_running_loop().call_later(0.02, current.cancel)
        await within(0.02, answer_after(5))

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(wait_and_be_cancelled())
