"""Lifecycle events store, extend and drop deadlines in PostgreSQL, idempotently."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from webhook_tasks_contracts import (
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
)
from webhook_tasks_expirer.handlers import AnyLifecycleEvent, LifecycleHandler
from webhook_tasks_expirer.repository import (
    PostgresDeadlineStore,
    deadline_for,
    take_due_deadlines,
)

pytestmark = pytest.mark.integration

DEADLINE = datetime(2030, 1, 1, 12, 5, tzinfo=UTC)
TASK = TaskRef(task_id="task-1", user_id="user-1", project_id="project-1")


def dispatched(deadline_at: datetime = DEADLINE) -> TaskDispatched:
    return TaskDispatched(
        correlation_id="corr-1",
        task=TASK,
        deadline_at=deadline_at,
        timeout_seconds=300,
        webhook_host="example.com",
    )


def progressed(deadline_at: datetime) -> TaskProgressed:
    return TaskProgressed(correlation_id="corr-1", task=TASK, deadline_at=deadline_at)


def completed() -> TaskCompleted:
    return TaskCompleted(correlation_id="corr-1", task=TASK)


def failed() -> TaskFailed:
    return TaskFailed(
        correlation_id="corr-1", task=TASK, cause="dispatch_rejected", reason="HTTP 400"
    )


def expired() -> TaskExpired:
    return TaskExpired(
        correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, timeout_seconds=300
    )


@pytest.fixture
def noticed() -> list[datetime]:
    return []


@pytest.fixture
def handler(expirer_pool: asyncpg.Pool, noticed: list[datetime]) -> LifecycleHandler:
    return LifecycleHandler(PostgresDeadlineStore(expirer_pool), on_deadline_stored=noticed.append)


async def stored_deadline(pool: asyncpg.Pool) -> datetime | None:
    async with pool.acquire() as conn:
        return await deadline_for(conn, "corr-1")


async def test_dispatch_stores_the_deadline(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    await handler(dispatched())

    assert await stored_deadline(expirer_pool) == DEADLINE
    assert noticed == [DEADLINE]


async def test_progress_extends_the_deadline(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    later = DEADLINE + timedelta(minutes=5)
    await handler(dispatched())
    await handler(progressed(later))

    assert await stored_deadline(expirer_pool) == later
    assert noticed == [DEADLINE, later]


async def test_an_older_progress_event_never_pulls_the_deadline_back(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    later = DEADLINE + timedelta(minutes=5)
    await handler(dispatched())
    await handler(progressed(later))
    await handler(progressed(DEADLINE + timedelta(minutes=1)))

    assert await stored_deadline(expirer_pool) == later
    assert noticed == [DEADLINE, later]


async def test_a_heartbeat_taken_before_the_2xx_gives_way_to_the_later_deadline_of_the_2xx(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool
) -> None:
    # The gateway takes callbacks while the task is still pending: the heartbeat's deadline
    # comes first, the acceptance's later one after. Kept, the earlier one fired, the
    # dispatcher ignored it as moved, and nothing was left to expire the task on time.
    await handler(progressed(DEADLINE - timedelta(seconds=2)))
    await handler(dispatched())

    assert await stored_deadline(expirer_pool) == DEADLINE


async def test_progress_after_the_deadline_fired_sets_a_new_one(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool
) -> None:
    # The scanner deleted the row when it fired; the dispatcher decides whether it still
    # expires the task, so the newer deadline must be kept meanwhile.
    later = DEADLINE + timedelta(minutes=5)
    await handler(progressed(later))

    assert await stored_deadline(expirer_pool) == later


async def test_a_replay_after_the_deadline_fired_does_not_bring_it_back(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    await handler(dispatched())
    async with expirer_pool.acquire() as conn, conn.transaction():
        fired = await take_due_deadlines(conn, DEADLINE, limit=10)
    assert [deadline.deadline_at for deadline in fired] == [DEADLINE]

    await handler(dispatched())  # the topic replayed: fired once is enough

    assert await stored_deadline(expirer_pool) is None
    assert noticed == [DEADLINE]
    later = DEADLINE + timedelta(minutes=5)
    await handler(progressed(later))  # a later one still counts
    assert await stored_deadline(expirer_pool) == later


@pytest.mark.parametrize("terminal", [completed, failed, expired])
async def test_a_terminal_event_drops_the_deadline_for_good(
    handler: LifecycleHandler,
    expirer_pool: asyncpg.Pool,
    terminal: Callable[[], AnyLifecycleEvent],
) -> None:
    await handler(dispatched())
    await handler(terminal())
    assert await stored_deadline(expirer_pool) is None

    # A replay of the topic from the start brings the earlier events again.
    await handler(dispatched())
    await handler(progressed(DEADLINE + timedelta(minutes=5)))
    assert await stored_deadline(expirer_pool) is None


async def test_a_terminal_event_before_any_dispatch_still_blocks_it(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    await handler(completed())
    await handler(dispatched())

    assert await stored_deadline(expirer_pool) is None
    assert noticed == []


async def test_replaying_the_whole_history_changes_nothing(
    handler: LifecycleHandler, expirer_pool: asyncpg.Pool, noticed: list[datetime]
) -> None:
    history: list[TaskDispatched | TaskProgressed] = [
        dispatched(),
        progressed(DEADLINE + timedelta(minutes=1)),
        progressed(DEADLINE + timedelta(minutes=2)),
    ]
    for event in history:
        await handler(event)
        await handler(event)
    assert noticed == [event.deadline_at for event in history]
    noticed.clear()

    for event in history:
        await handler(event)

    assert await stored_deadline(expirer_pool) == DEADLINE + timedelta(minutes=2)
    assert await expirer_pool.fetchval("SELECT count(*) FROM deadlines") == 1
    assert noticed == []
