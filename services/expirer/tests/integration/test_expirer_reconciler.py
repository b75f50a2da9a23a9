"""The reconciliation sweep on real PostgreSQL: lost deadlines back, stuck tasks re-announced."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg
import pytest
from webhook_tasks_contracts import DeadlineReached, Topics
from webhook_tasks_expirer.reconciler import Reconciler
from webhook_tasks_expirer.repository import (
    deadline_for,
    finish_task,
    store_deadline,
    take_due_deadlines,
)

from .conftest import FakeClock

pytestmark = pytest.mark.integration

GRACE = timedelta(seconds=60)


class Noticed:
    def __init__(self) -> None:
        self.deadlines: list[datetime] = []
        self.relay_wakeups = 0

    def deadline(self, deadline_at: datetime) -> None:
        self.deadlines.append(deadline_at)

    def wake_relay(self) -> None:
        self.relay_wakeups += 1


def reconciler_for(
    pool: asyncpg.Pool, topics: Topics, clock: FakeClock, noticed: Noticed, **options: object
) -> Reconciler:
    return Reconciler(
        pool,
        topics=topics,
        wake_relay=noticed.wake_relay,
        on_deadline_restored=noticed.deadline,
        clock=clock,
        grace=GRACE,
        # `options` are Reconciler's own keywords, each of its own type.
        **options,  # type: ignore[arg-type]
    )


async def outbox_events(pool: asyncpg.Pool) -> list[DeadlineReached]:
    rows = await pool.fetch("SELECT payload FROM outbox ORDER BY id")
    return [DeadlineReached.model_validate_json(row["payload"]) for row in rows]


async def test_a_healthy_store_needs_no_repair(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "waiting", "task-1", clock.now + timedelta(seconds=30))
        await store_deadline(conn, "ended", "task-2", clock.now + timedelta(seconds=30))
        await finish_task(conn, "ended")
        await store_deadline(conn, "just-fired", "task-3", clock.now - timedelta(seconds=1))
        async with conn.transaction():
            await take_due_deadlines(conn, clock.now, 10)
    noticed = Noticed()

    repairs = await reconciler_for(expirer_pool, unique_topics, clock, noticed).sweep()

    assert (repairs.restored, repairs.reannounced, repairs.dropped) == ([], [], [])
    assert await outbox_events(expirer_pool) == []
    assert noticed.deadlines == []


async def test_a_lost_deadline_still_ahead_is_restored_and_logged(
    expirer_pool: asyncpg.Pool,
    unique_topics: Topics,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    later = clock.now + timedelta(seconds=30)
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "lost", "task-1", clock.now + timedelta(seconds=10))
        await store_deadline(conn, "lost", "task-1", later)
        # What a crash or a careless restore might leave: the task, but no deadline.
        await conn.execute("DELETE FROM deadlines WHERE correlation_id = 'lost'")
    noticed = Noticed()
    reconciler = reconciler_for(expirer_pool, unique_topics, clock, noticed)

    with caplog.at_level(logging.WARNING):
        repairs = await reconciler.sweep()

    assert [task.correlation_id for task in repairs.restored] == ["lost"]
    async with expirer_pool.acquire() as conn:
        assert await deadline_for(conn, "lost") == later
    assert noticed.deadlines == [later]
    assert [
        (record.getMessage(), getattr(record, "correlation_id", None)) for record in caplog.records
    ] == [("repaired: restored a lost deadline", "lost")]
    assert (await reconciler.sweep()).restored == []


async def test_a_stuck_task_is_announced_again_once_per_grace(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    deadline = clock.now
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "stuck", "task-1", deadline)
        async with conn.transaction():
            # The scanner fired it; then no terminal event ever came.
            assert len(await take_due_deadlines(conn, clock.now, 10)) == 1
    noticed = Noticed()
    reconciler = reconciler_for(expirer_pool, unique_topics, clock, noticed)

    clock.advance(GRACE - timedelta(seconds=1))
    assert (await reconciler.sweep()).reannounced == []
    clock.advance(timedelta(seconds=1))
    first = (await reconciler.sweep()).reannounced
    clock.advance(GRACE / 2)
    assert (await reconciler.sweep()).reannounced == []
    clock.advance(GRACE / 2)
    second = (await reconciler.sweep()).reannounced

    assert [event.correlation_id for event in first + second] == ["stuck", "stuck"]
    assert {event.deadline_at for event in first + second} == {deadline}
    assert first[0].event_id != second[0].event_id
    assert await outbox_events(expirer_pool) == first + second
    assert noticed.relay_wakeups == 2

    async with expirer_pool.acquire() as conn:
        await finish_task(conn, "stuck")
    clock.advance(GRACE * 2)
    assert (await reconciler.sweep()).reannounced == []


async def test_a_passed_deadline_lost_before_it_fired_is_announced_at_once(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    deadline = clock.now + timedelta(seconds=5)
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "lost", "task-1", deadline)
        await conn.execute("DELETE FROM deadlines WHERE correlation_id = 'lost'")
    reconciler = reconciler_for(expirer_pool, unique_topics, clock, Noticed())
    assert (await reconciler.sweep()).restored != []
    async with expirer_pool.acquire() as conn:
        await conn.execute("DELETE FROM deadlines WHERE correlation_id = 'lost'")

    clock.advance(timedelta(seconds=5))
    repairs = await reconciler.sweep()

    assert [(e.correlation_id, e.deadline_at) for e in repairs.reannounced] == [("lost", deadline)]


async def test_a_deadline_announced_late_gets_its_full_grace(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    # Stored and fired long after it passed, as after a consumer backlog.
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "late", "task-1", clock.now - GRACE * 3)
        async with conn.transaction():
            assert len(await take_due_deadlines(conn, clock.now, 10)) == 1
    reconciler = reconciler_for(expirer_pool, unique_topics, clock, Noticed())

    assert (await reconciler.sweep()).reannounced == []
    clock.advance(GRACE)
    assert [e.correlation_id for e in (await reconciler.sweep()).reannounced] == ["late"]


async def test_leftovers_of_finished_tasks_are_dropped(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    async with expirer_pool.acquire() as conn:
        await store_deadline(conn, "ended", "task-1", clock.now + timedelta(seconds=30))
        # A tombstone written without the deletes that normally go with it.
        await conn.execute("INSERT INTO finished_tasks (correlation_id) VALUES ('ended')")

    repairs = await reconciler_for(expirer_pool, unique_topics, clock, Noticed()).sweep()

    assert repairs.dropped == ["ended"]
    assert repairs.restored == []
    async with expirer_pool.acquire() as conn:
        assert await deadline_for(conn, "ended") is None
        assert await conn.fetchval("SELECT count(*) FROM watched_tasks") == 0


async def test_leftovers_are_dropped_in_batches_among_many_open_tasks(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    # Each statement reads a batch of open tasks, so none outlasts the statement timeout.
    async with expirer_pool.acquire() as conn:
        for index in range(7):
            await store_deadline(conn, f"open-{index}", "task-1", clock.now + timedelta(hours=1))
        await conn.executemany(
            "INSERT INTO finished_tasks (correlation_id) VALUES ($1)",
            [("open-1",), ("open-4",), ("open-6",), ("never-open",)],
        )
    reconciler = reconciler_for(expirer_pool, unique_topics, clock, Noticed(), batch_size=2)

    repairs = await reconciler.sweep()

    assert repairs.dropped == ["open-1", "open-4", "open-6"]
    left = await expirer_pool.fetch("SELECT correlation_id FROM deadlines ORDER BY 1")
    assert [row["correlation_id"] for row in left] == ["open-0", "open-2", "open-3", "open-5"]
    watched = await expirer_pool.fetch("SELECT correlation_id FROM watched_tasks ORDER BY 1")
    assert [row["correlation_id"] for row in watched] == ["open-0", "open-2", "open-3", "open-5"]


async def test_tombstones_older_than_the_retention_are_pruned_in_batches(
    expirer_pool: asyncpg.Pool, unique_topics: Topics, clock: FakeClock
) -> None:
    retention = timedelta(days=7)
    await expirer_pool.executemany(
        "INSERT INTO finished_tasks (correlation_id, finished_at) VALUES ($1, $2)",
        [(f"old-{i}", clock.now - retention - timedelta(seconds=i + 1)) for i in range(5)]
        + [("recent", clock.now - retention + timedelta(seconds=1))],
    )
    reconciler = reconciler_for(
        expirer_pool,
        unique_topics,
        clock,
        Noticed(),
        finished_retention=retention,
        batch_size=2,
    )

    repairs = await reconciler.sweep()

    assert repairs.pruned == 5
    remaining = await expirer_pool.fetch("SELECT correlation_id FROM finished_tasks")
    assert [row["correlation_id"] for row in remaining] == ["recent"]
