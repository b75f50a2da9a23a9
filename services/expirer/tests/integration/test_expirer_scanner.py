"""The scanner emits due deadlines into the outbox once, in order, across racing replicas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from webhook_tasks_contracts import DeadlineReached, Topics, derived_event_id
from webhook_tasks_expirer import repository
from webhook_tasks_expirer.repository import deadline_for, store_deadline
from webhook_tasks_expirer.scanner import DeadlineScanner

from .conftest import FakeClock

pytestmark = pytest.mark.integration


class RelayWakeups:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def scanner_for(
    pool: asyncpg.Pool,
    topics: Topics,
    clock: FakeClock,
    wakeups: RelayWakeups | None = None,
    *,
    batch_size: int = 500,
    poll_interval: float = 0.25,
) -> DeadlineScanner:
    return DeadlineScanner(
        pool,
        topics=topics,
        wake_relay=wakeups or RelayWakeups(),
        clock=clock,
        batch_size=batch_size,
        poll_interval=poll_interval,
    )


async def store_deadlines(pool: asyncpg.Pool, deadlines: dict[str, datetime]) -> None:
    async with pool.acquire() as conn:
        for correlation_id, deadline_at in deadlines.items():
            assert await store_deadline(conn, correlation_id, f"task-{correlation_id}", deadline_at)


async def outbox_events(pool: asyncpg.Pool) -> list[tuple[str, str, DeadlineReached]]:
    rows = await pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
    return [
        (row["topic"], row["key"], DeadlineReached.model_validate_json(row["payload"]))
        for row in rows
    ]


async def test_it_emits_exactly_the_due_deadlines_in_order(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    now = clock.now
    await store_deadlines(
        expirer_pool,
        {
            "due-now": now,
            "overdue": now - timedelta(seconds=5),
            "not-yet": now + timedelta(milliseconds=1),
        },
    )
    wakeups = RelayWakeups()
    scanner = scanner_for(expirer_pool, unique_topics, clock, wakeups)

    emitted = await scanner.scan()

    assert [event.correlation_id for event in emitted] == ["overdue", "due-now"]
    outbox = await outbox_events(expirer_pool)
    assert [(topic, key) for topic, key, _ in outbox] == [
        (unique_topics.deadline_reached, "overdue"),
        (unique_topics.deadline_reached, "due-now"),
    ]
    overdue = outbox[0][2]
    assert overdue.deadline_at == now - timedelta(seconds=5)
    assert overdue.occurred_at == now
    assert overdue.event_id == derived_event_id(
        "deadline", "overdue", overdue.deadline_at.isoformat()
    )
    assert wakeups.count == 1
    async with expirer_pool.acquire() as conn:
        assert await deadline_for(conn, "overdue") is None
        assert await deadline_for(conn, "not-yet") == now + timedelta(milliseconds=1)


async def test_it_never_emits_a_deadline_twice(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    await store_deadlines(
        expirer_pool, {"first": clock.now, "second": clock.now + timedelta(seconds=1)}
    )
    wakeups = RelayWakeups()
    scanner = scanner_for(expirer_pool, unique_topics, clock, wakeups)

    assert [event.correlation_id for event in await scanner.scan()] == ["first"]
    assert await scanner.scan() == []
    clock.advance(timedelta(seconds=1))
    assert [event.correlation_id for event in await scanner.scan()] == ["second"]
    assert await scanner.scan() == []

    assert [key for _, key, _ in await outbox_events(expirer_pool)] == ["first", "second"]
    assert wakeups.count == 2


async def test_a_deadline_replayed_after_it_fired_is_not_announced_again(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    # Between the scan and the terminal event, a replayed TaskDispatched brings the same
    # deadline again: it has fired, so it is neither stored nor announced a second time.
    scanner = scanner_for(expirer_pool, unique_topics, clock)
    await store_deadlines(expirer_pool, {"corr-1": clock.now})
    [first] = await scanner.scan()
    async with expirer_pool.acquire() as conn:
        assert not await store_deadline(conn, "corr-1", "task-corr-1", clock.now)

    assert await scanner.scan() == []
    assert [event for _, _, event in await outbox_events(expirer_pool)] == [first]


async def test_it_drains_more_due_deadlines_than_one_batch(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    deadlines = {f"corr-{n:02}": clock.now - timedelta(seconds=n) for n in range(23)}
    await store_deadlines(expirer_pool, deadlines)
    scanner = scanner_for(expirer_pool, unique_topics, clock, batch_size=5)

    emitted = await scanner.scan()

    assert [event.correlation_id for event in emitted] == sorted(deadlines, reverse=True)
    assert await expirer_pool.fetchval("SELECT count(*) FROM deadlines") == 0


async def test_racing_scanners_emit_each_deadline_exactly_once(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    deadlines = {f"corr-{n:03}": clock.now - timedelta(milliseconds=n) for n in range(300)}
    await store_deadlines(expirer_pool, deadlines)
    scanners = [scanner_for(expirer_pool, unique_topics, clock, batch_size=7) for _ in range(4)]

    results = await asyncio.gather(*(scanner.scan() for scanner in scanners))

    emitted = [event.correlation_id for events in results for event in events]
    assert sorted(emitted) == sorted(deadlines)
    outbox_keys = [key for _, key, _ in await outbox_events(expirer_pool)]
    assert sorted(outbox_keys) == sorted(deadlines)


async def test_a_deadline_another_replica_holds_is_skipped_not_waited_for(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    await store_deadlines(expirer_pool, {"held": clock.now, "free": clock.now})
    scanner = scanner_for(expirer_pool, unique_topics, clock)

    async with expirer_pool.acquire() as other_replica, other_replica.transaction():
        await other_replica.execute(
            "SELECT 1 FROM deadlines WHERE correlation_id = 'held' FOR UPDATE"
        )
        emitted = await asyncio.wait_for(scanner.scan(), timeout=10)
        assert [event.correlation_id for event in emitted] == ["free"]

    assert [event.correlation_id for event in await scanner.scan()] == ["held"]


async def test_finding_due_deadlines_reads_the_deadline_index(
    expirer_pool: asyncpg.Pool, clock: FakeClock
) -> None:
    # Millions of pending deadlines must not slow the scan: it reads the index front.
    await expirer_pool.execute(
        """
        INSERT INTO deadlines (correlation_id, task_id, deadline_at)
        SELECT 'corr-' || n, 'task-' || n, $1::timestamptz + n * interval '1 second'
        FROM generate_series(1, 20000) AS n
        """,
        clock.now,
    )
    await expirer_pool.execute("ANALYZE deadlines")

    plan = await expirer_pool.fetch(
        "EXPLAIN SELECT correlation_id FROM deadlines WHERE deadline_at <= $1"
        " ORDER BY deadline_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        clock.now,
        500,
    )

    plan_text = "\n".join(row[0] for row in plan)
    assert "deadlines_deadline_at_idx" in plan_text, plan_text


async def test_a_new_earlier_deadline_wakes_the_sleeping_loop(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    # A poll interval far longer than the test: only the notice can wake the loop in time.
    scanner = scanner_for(expirer_pool, unique_topics, clock, poll_interval=60)
    loop = asyncio.create_task(scanner.run())
    try:
        await asyncio.sleep(0.3)
        await store_deadlines(expirer_pool, {"corr-1": clock.now})
        scanner.notice_deadline(clock.now)

        async with asyncio.timeout(5):
            while not await outbox_events(expirer_pool):
                await asyncio.sleep(0.02)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    assert [key for _, key, _ in await outbox_events(expirer_pool)] == ["corr-1"]


async def test_a_later_deadline_does_not_wake_the_loop_early(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    scanner = scanner_for(expirer_pool, unique_topics, clock, poll_interval=60)
    loop = asyncio.create_task(scanner.run())
    try:
        await asyncio.sleep(0.3)
        # Already due, but announced as later than the planned wake-up: the loop
        # keeps sleeping, so stored deadlines wake it only when they are sooner.
        await store_deadlines(expirer_pool, {"corr-1": clock.now})
        scanner.notice_deadline(clock.now + timedelta(minutes=5))
        await asyncio.sleep(1)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    assert await outbox_events(expirer_pool) == []


async def test_a_task_finishing_while_its_deadline_fires_waits_rather_than_deadlocks(
    expirer_pool: asyncpg.Pool,
) -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    async with expirer_pool.acquire() as conn:
        await repository.store_deadline(conn, "cid-race", "task-race", now - timedelta(seconds=1))
    firing = asyncio.Event()

    async def fire() -> None:
        async with expirer_pool.acquire() as conn, conn.transaction():
            # take_due_deadlines, held open between its two statements
            await conn.execute("DELETE FROM deadlines WHERE correlation_id = 'cid-race'")
            firing.set()
            await asyncio.sleep(0.5)
            await conn.execute(
                "UPDATE watched_tasks SET announced_at = $1 WHERE correlation_id = 'cid-race'", now
            )

    async def finish() -> None:
        await firing.wait()
        async with expirer_pool.acquire() as conn:
            await repository.finish_task(conn, "cid-race")

    await asyncio.wait_for(asyncio.gather(fire(), finish()), 15)

    async with expirer_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM watched_tasks") == 0
        assert await conn.fetchval("SELECT count(*) FROM finished_tasks") == 1
