"""Hundreds of success callbacks arriving within milliseconds of their deadlines: one end each."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta

import aiohttp
import pytest
from webhook_tasks_contracts import utc_now

from .conftest import RunningSystem, wait_until
from .e2e_bursts import (
    FOLLOWER,
    USER,
    TaskState,
    burst_requests,
    connect,
    count_terminal_comments,
    http_session,
    outcomes,
    post_success,
    publish_all,
    tally,
    task_states,
    warm_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TASKS = 300
# Callbacks are sent from 40 ms before to 5 ms after their task's deadline: the gateway's
# answer takes a few milliseconds, so the earlier ones are accepted before it.
OFFSETS_MS = range(-40, 6, 3)


async def call_back_at(
    http: aiohttp.ClientSession, system: RunningSystem, task: TaskState, offset_ms: int
) -> tuple[float, float]:
    """Send the task's success callback `offset_ms` after its deadline.

    Return when it was sent and when the gateway accepted it, in ms after the deadline.
    """
    assert task.deadline_at is not None
    target = task.deadline_at + timedelta(milliseconds=offset_ms)
    wait = (target - utc_now()).total_seconds()
    assert wait > 0.05, f"set-up too slow: deadline of {task.correlation_id} already near"
    await asyncio.sleep(wait)
    sent_at = utc_now()
    assert await post_success(http, system, task.correlation_id) == 202
    accepted_at = utc_now()
    return (
        (sent_at - task.deadline_at).total_seconds() * 1000,
        (accepted_at - task.deadline_at).total_seconds() * 1000,
    )


async def test_callbacks_racing_their_deadlines_end_each_task_once(system: RunningSystem) -> None:
    await warm_up(system)
    requests = burst_requests(system, "race", TASKS, timeouts=[5, 6], outcome="never")
    task_ids = [request.task_id for request in requests]
    conn = await connect(system)
    try:
        await publish_all(system, requests)
        scheduled: dict[str, asyncio.Task[tuple[float, float]]] = {}
        async with http_session() as http:
            # Each callback is timed as soon as its task's deadline is known.
            stop_at = time.monotonic() + 60
            while len(scheduled) < TASKS:
                assert time.monotonic() < stop_at, "tasks were not all dispatched"
                for task in await task_states(conn, task_ids):
                    if task.deadline_at is not None and task.correlation_id not in scheduled:
                        offset = OFFSETS_MS[len(scheduled) % len(OFFSETS_MS)]
                        scheduled[task.correlation_id] = asyncio.create_task(
                            call_back_at(http, system, task, offset)
                        )
                await asyncio.sleep(0.02)
            timings = dict(zip(scheduled, await asyncio.gather(*scheduled.values()), strict=True))
        correlation_ids = list(scheduled)
        await wait_until(
            lambda: count_terminal_comments(conn, correlation_ids),
            lambda written: written >= TASKS,
            within=60,
            what="every task commented",
            interval=0.1,
        )
        # Where the deadline won, the success that followed is shown as a late result.
        await wait_until(
            lambda: outcomes(conn, task_ids),
            lambda found: all(
                outcome.late_results == 1
                for outcome in found.values()
                if outcome.state.status == "expired"
            ),
            within=60,
            what="every expired task's late result shown",
            interval=0.1,
        )
        await asyncio.sleep(2.0)  # a second outcome or comment still in flight would land now

        found = await outcomes(conn, task_ids)
        assert len(found) == TASKS
        ends = tally(outcome.state.status for outcome in found.values())
        assert set(ends) <= {"completed", "expired"}
        for outcome in found.values():
            expected_comment = "result" if outcome.state.status == "completed" else "expired"
            assert outcome.terminal_comment_kinds == [expected_comment], outcome
            assert outcome.notified_users == sorted((USER, FOLLOWER)), outcome
            assert outcome.applied in (["callback:success"], ["deadline"]), outcome
            assert outcome.late_results == (1 if outcome.state.status == "expired" else 0), outcome
        # A success the gateway accepted before the deadline wins, whatever the order in which
        # the dispatcher got to the callback and to the deadline.
        by_correlation_id = {outcome.state.correlation_id: outcome for outcome in found.values()}
        accepted_in_time = [
            correlation_id for correlation_id, (_, accepted) in timings.items() if accepted < 0
        ]
        lost = [
            (correlation_id, timings[correlation_id])
            for correlation_id in accepted_in_time
            if by_correlation_id[correlation_id].state.status != "completed"
        ]
        assert accepted_in_time, "no callback was accepted before its deadline"
        assert lost == []
        actual_offsets = [sent for sent, _ in timings.values()]
        print(
            f"race ends: {ends}; {len(accepted_in_time)} accepted in time; callbacks sent"
            f" {statistics.median(actual_offsets):+.1f} ms"
            f" from the deadline at the median, {min(actual_offsets):+.1f}..."
            f"{max(actual_offsets):+.1f} ms"
        )
    finally:
        await conn.close()
