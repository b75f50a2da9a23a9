"""within() and SharedTimeLimit: time limits with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from webhook_tasks_runtime.timeouts import SharedTimeLimit, within

Limit = Callable[[float, Awaitable[Any]], Awaitable[Any]]


def shared(seconds: float, work: Awaitable[Any]) -> Awaitable[Any]:
    # A sweep every 5 ms: expiries in these tests come about as soon as within()'s.
    return SharedTimeLimit(seconds, resolution=0.005).within(work)


@pytest.fixture(params=[within, shared], ids=["within", "SharedTimeLimit"])
def limit(request: pytest.FixtureRequest) -> Limit:
    return request.param  # type: ignore[no-any-return]  # one of the two above


async def answer_after(seconds: float, value: str = "done") -> str:
    await asyncio.sleep(seconds)
    return value


async def test_work_that_finishes_in_time_returns_its_result(limit: Limit) -> None:
    assert await limit(1.0, answer_after(0.01)) == "done"


async def test_work_that_does_not_finish_in_time_raises_timeout_error(limit: Limit) -> None:
    with pytest.raises(TimeoutError):
        await limit(0.02, answer_after(5))

    # The task is not left cancelling: it can go on awaiting.
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    assert await answer_after(0.001, "after") == "after"


async def test_work_that_fails_raises_its_own_error(limit: Limit) -> None:
    async def fail() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await limit(1.0, fail())


async def test_a_cancellation_from_outside_stays_a_cancellation(limit: Limit) -> None:
    started = asyncio.Event()

    async def wait_long() -> None:
        started.set()
        await limit(30, answer_after(30))

    task = asyncio.create_task(wait_long())
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_outside_at_expiry_stays_a_cancellation(limit: Limit) -> None:
    async def wait_and_be_cancelled() -> None:
        current = asyncio.current_task()
        assert current is not None
        # Cancelled from outside in the same turn as the limit expires.
        asyncio.get_running_loop().call_later(0.02, current.cancel)
        await limit(0.02, answer_after(5))

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(wait_and_be_cancelled())


async def test_a_shared_limit_expires_each_await_on_its_own_time() -> None:
    limit = SharedTimeLimit(0.05, resolution=0.005)
    outcomes: list[str] = []

    async def run(work_seconds: float, name: str) -> None:
        try:
            await limit.within(answer_after(work_seconds))
            outcomes.append(f"{name} finished")
        except TimeoutError:
            outcomes.append(f"{name} timed out")

    async def later(delay: float, work_seconds: float, name: str) -> None:
        await asyncio.sleep(delay)
        await run(work_seconds, name)

    started = time.monotonic()
    await asyncio.gather(
        run(0.01, "quick"), run(5, "slow"), later(0.03, 0.04, "late but quick enough")
    )

    # The late one's limit counts from its own start (0.03 + 0.05), not the first await's.
    assert sorted(outcomes) == [
        "late but quick enough finished",
        "quick finished",
        "slow timed out",
    ]
    assert time.monotonic() - started < 1


async def test_a_shared_limit_forgets_awaits_that_ended_and_stops_sweeping() -> None:
    limit = SharedTimeLimit(10, resolution=0.005)

    await asyncio.gather(*(limit.within(answer_after(0.001)) for _ in range(100)))
    await asyncio.sleep(0.02)

    assert len(limit._limits) == 0
    assert limit._sweep is None


def test_a_shared_limit_used_in_a_new_event_loop_still_expires() -> None:
    limit = SharedTimeLimit(0.02, resolution=0.005)

    async def left_pending() -> None:
        # The loop ends while this await is still limited, its sweep still armed.
        asyncio.get_running_loop().create_task(limit.within(answer_after(5)))
        await asyncio.sleep(0.001)

    asyncio.run(left_pending())

    async def in_the_next_loop() -> None:
        with pytest.raises(TimeoutError):
            await limit.within(answer_after(5))

    asyncio.run(asyncio.wait_for(in_the_next_loop(), 2))
