"""kill -9 a service in the middle of a burst: every task still ends once, as it would have."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from webhook_tasks_contracts import UserNotified, notification_event_adapter

from .conftest import RunningSystem, wait_until
from .e2e_bursts import (
    assert_each_ended_once,
    burst_requests,
    connect,
    count_deadlines,
    count_terminal_comments,
    ended,
    ensure_running,
    every_task_dispatched,
    freeze_then_kill,
    http_session,
    outcomes,
    post_success,
    publish_all,
    read_topic,
    tally,
    task_states,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

BURST = 200


async def assert_each_user_announced_once(system: RunningSystem, correlation_ids: set[str]) -> None:
    """Check the notifications topic tells each user once (a re-sent copy keeps its event id)."""
    told = await read_topic(
        system,
        system.topics.notifications,
        notification_event_adapter,
        correlation_ids,
        done=lambda events: (
            len({(e.correlation_id, e.user_id) for e in events if isinstance(e, UserNotified)})
            == 2 * BURST
        ),
    )
    ids_per_user: dict[tuple[str, str], set[object]] = {}
    for event in told:
        if isinstance(event, UserNotified):
            ids_per_user.setdefault((event.correlation_id, event.user_id), set()).add(
                event.event_id
            )
    assert len(ids_per_user) == 2 * BURST
    assert {len(ids) for ids in ids_per_user.values()} == {1}


async def test_notifier_killed_mid_burst_writes_each_outcome_once(system: RunningSystem) -> None:
    requests = burst_requests(system, "crash-notifier", BURST, timeouts=[300], outcome="never")
    task_ids = [request.task_id for request in requests]
    conn = await connect(system)
    try:
        await publish_all(system, requests)
        states = await every_task_dispatched(conn, task_ids)
        correlation_ids = [state.correlation_id for state in states]

        async def kill_once_comments_appear() -> int:
            while True:
                written = await count_terminal_comments(conn, correlation_ids)
                if written:
                    await freeze_then_kill(system, "notifier")
                    return written
                await asyncio.sleep(0.005)

        async with http_session() as http:
            killer = asyncio.create_task(kill_once_comments_appear())
            answers = await asyncio.gather(
                *(post_success(http, system, cid) for cid in correlation_ids)
            )
        assert tally(answers) == {202: BURST}
        written_before_kill = await asyncio.wait_for(killer, 60)
        # Commits already sent when the process froze may still land; then nothing moves.
        await asyncio.sleep(0.5)
        written_before_kill = await count_terminal_comments(conn, correlation_ids)
        await asyncio.sleep(0.5)
        assert await count_terminal_comments(conn, correlation_ids) == written_before_kill
        # Caught in the middle: some outcomes written, others still to come.
        assert 0 < written_before_kill < BURST

        system.stack.start_service("notifier")
        restarted = time.monotonic()
        await wait_until(
            lambda: count_terminal_comments(conn, correlation_ids),
            lambda written: written >= BURST,
            within=90,
            what="every outcome commented after the restart",
            interval=0.1,
        )
        print(
            f"notifier killed after {written_before_kill}/{BURST} comments;"
            f" the rest written {time.monotonic() - restarted:.1f}s after the restart"
        )
        await asyncio.sleep(1.0)  # a duplicate still in flight would land now
        assert_each_ended_once(await outcomes(conn, task_ids), BURST, "completed", "result")
        await assert_each_user_announced_once(system, set(correlation_ids))
    finally:
        await conn.close()
        ensure_running(system, "notifier")


async def test_expirer_killed_mid_burst_expires_each_task_once(system: RunningSystem) -> None:
    # Three waves of deadlines a second apart, so the kill lands after the first wave fired.
    requests = burst_requests(system, "crash-expirer", BURST, timeouts=[6, 7, 8], outcome="never")
    task_ids = [request.task_id for request in requests]
    conn = await connect(system)
    try:
        await publish_all(system, requests)
        states = await every_task_dispatched(conn, task_ids)
        correlation_ids = [state.correlation_id for state in states]
        await wait_until(
            lambda: count_deadlines(conn, correlation_ids),
            lambda pending: pending == BURST,
            within=30,
            what="every deadline stored by the expirer",
            interval=0.02,
        )
        earliest = min(state.deadline_at for state in states if state.deadline_at is not None)
        pending = await wait_until(
            lambda: count_deadlines(conn, correlation_ids),
            lambda pending: pending < BURST,
            within=30,
            what=f"the first deadlines (from {earliest.isoformat()}) fired",
            interval=0.005,
        )
        await freeze_then_kill(system, "expirer")
        # Caught in the middle: some deadlines fired, others still pending.
        assert 0 < pending < BURST
        restarted_after = BURST - pending

        system.stack.start_service("expirer")
        await wait_until(
            lambda: task_states(conn, task_ids),
            lambda rows: all(row.status == "expired" for row in rows),
            within=90,
            what="every task expired after the restart",
            interval=0.2,
        )
        await wait_until(
            lambda: count_terminal_comments(conn, correlation_ids),
            lambda written: written >= BURST,
            within=60,
            what="every expiry commented",
            interval=0.1,
        )
        print(f"expirer killed after {restarted_after}/{BURST} deadlines fired")
        await asyncio.sleep(1.0)  # a duplicate still in flight would land now
        assert_each_ended_once(await outcomes(conn, task_ids), BURST, "expired", "expired")
        assert await count_deadlines(conn, correlation_ids) == 0
        await assert_each_user_announced_once(system, set(correlation_ids))
    finally:
        await conn.close()
        ensure_running(system, "expirer")


async def test_callbacks_taken_after_the_deadline_while_the_dispatcher_is_down_are_late(
    system: RunningSystem,
) -> None:
    count = 20
    requests = burst_requests(system, "crash-dispatcher", count, timeouts=[4], outcome="never")
    task_ids = [request.task_id for request in requests]
    conn = await connect(system)
    try:
        await publish_all(system, requests)
        states = await every_task_dispatched(conn, task_ids)
        correlation_ids = [state.correlation_id for state in states]
        # Killed once it has published that each task was dispatched (so the expirer learns of
        # every deadline), and before the first deadline.
        await wait_until(
            lambda: conn.fetchval(
                "SELECT count(*) FROM dispatcher.outbox WHERE key = ANY($1::text[])",
                correlation_ids,
            ),
            lambda unpublished: unpublished == 0,
            within=30,
            what="every task announced as dispatched",
            interval=0.02,
        )
        await freeze_then_kill(system, "dispatcher")
        first = min(state.deadline_at for state in states if state.deadline_at is not None)
        assert datetime.now(UTC) < first, "killed after a deadline: the test proves nothing"
        # The expirer, still running, reaches every deadline; the callbacks come 2 s later.
        await wait_until(
            lambda: conn.fetchval(
                "SELECT count(*) FROM expirer.watched_tasks"
                " WHERE correlation_id = ANY($1::text[]) AND announced_at IS NOT NULL",
                correlation_ids,
            ),
            lambda announced: announced == count,
            within=60,
            what="every deadline reached",
            interval=0.05,
        )
        last = max(state.deadline_at for state in states if state.deadline_at is not None)
        await asyncio.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds()) + 2.0)
        async with http_session() as http:
            answers = await asyncio.gather(
                *(post_success(http, system, cid) for cid in correlation_ids)
            )
        assert tally(answers) == {202: count}

        system.stack.start_service("dispatcher")
        found, _ = await ended(system, task_ids)
        # As with the dispatcher running throughout: expired, and the success a late result.
        assert_each_ended_once(found, count, "expired", "expired")
        assert tally(outcome.late_results for outcome in found.values()) == {1: count}
    finally:
        await conn.close()
        ensure_running(system, "dispatcher")
