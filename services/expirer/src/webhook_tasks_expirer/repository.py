"""Every SQL statement of the expirer: deadlines, finished tasks, and claiming due deadlines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class DueDeadline:
    """A deadline the scanner claimed because it has passed."""

    correlation_id: str
    task_id: str
    deadline_at: datetime


async def start_deadline(
    conn: asyncpg.Connection, correlation_id: str, task_id: str, deadline_at: datetime
) -> bool:
    """Store a task's first deadline unless it has one or is finished; return whether stored."""
    # An existing deadline is kept: it is either this same event again or a later move.
    stored = await conn.fetchval(
        """
        INSERT INTO deadlines (correlation_id, task_id, deadline_at)
        SELECT $1, $2, $3
        WHERE NOT EXISTS (SELECT 1 FROM finished_tasks WHERE correlation_id = $1)
        ON CONFLICT (correlation_id) DO NOTHING
        RETURNING true
        """,
        correlation_id,
        task_id,
        deadline_at,
    )
    return bool(stored)


async def extend_deadline(
    conn: asyncpg.Connection, correlation_id: str, task_id: str, deadline_at: datetime
) -> bool:
    """Move a task's deadline later unless the task is finished; return whether it changed."""
    # Only later: heartbeats extend the deadline, and a replay of older progress events
    # must not bring back a deadline that may already have passed.
    # An upsert, not an update: when the scanner already fired the old deadline, the
    # dispatcher may still be waiting on the task, so the new deadline must be kept.
    stored = await conn.fetchval(
        """
        INSERT INTO deadlines (correlation_id, task_id, deadline_at)
        SELECT $1, $2, $3
        WHERE NOT EXISTS (SELECT 1 FROM finished_tasks WHERE correlation_id = $1)
        ON CONFLICT (correlation_id) DO UPDATE
            SET deadline_at = EXCLUDED.deadline_at, updated_at = now()
            WHERE deadlines.deadline_at < EXCLUDED.deadline_at
        RETURNING true
        """,
        correlation_id,
        task_id,
        deadline_at,
    )
    return bool(stored)


async def finish_task(conn: asyncpg.Connection, correlation_id: str) -> None:
    """Forget a task's deadline and remember that the task is finished."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO finished_tasks (correlation_id) VALUES ($1) ON CONFLICT DO NOTHING",
            correlation_id,
        )
        await conn.execute("DELETE FROM deadlines WHERE correlation_id = $1", correlation_id)


async def take_due_deadlines(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[DueDeadline]:
    """Delete and return up to `limit` deadlines at or before `now`, earliest first.

    Rows another transaction holds are skipped, so replicas scanning at once
    each take different deadlines. Call inside the transaction that also
    records what the deadlines cause, so a rollback puts them back.
    """
    rows = await conn.fetch(
        """
        DELETE FROM deadlines
        WHERE correlation_id IN (
            SELECT correlation_id FROM deadlines
            WHERE deadline_at <= $1
            ORDER BY deadline_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        RETURNING correlation_id, task_id, deadline_at
        """,
        now,
        limit,
    )
    due = [DueDeadline(row["correlation_id"], row["task_id"], row["deadline_at"]) for row in rows]
    # DELETE ... RETURNING does not keep the subquery's order.
    return sorted(due, key=lambda deadline: deadline.deadline_at)


async def next_deadline(conn: asyncpg.Connection) -> datetime | None:
    """Return the earliest pending deadline, if any."""
    value: datetime | None = await conn.fetchval("SELECT min(deadline_at) FROM deadlines")
    return value


async def deadline_for(conn: asyncpg.Connection, correlation_id: str) -> datetime | None:
    """Return the pending deadline of one task, or None when it has none."""
    value: datetime | None = await conn.fetchval(
        "SELECT deadline_at FROM deadlines WHERE correlation_id = $1", correlation_id
    )
    return value


class PostgresDeadlineStore:
    """The handlers' view of the deadline tables, one pooled connection per call."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def start(self, correlation_id: str, task_id: str, deadline_at: datetime) -> bool:
        """Store a first deadline; return whether it was stored."""
        async with self._pool.acquire() as conn:
            return await start_deadline(conn, correlation_id, task_id, deadline_at)

    async def extend(self, correlation_id: str, task_id: str, deadline_at: datetime) -> bool:
        """Move a deadline later; return whether it changed."""
        async with self._pool.acquire() as conn:
            return await extend_deadline(conn, correlation_id, task_id, deadline_at)

    async def finish(self, correlation_id: str) -> None:
        """Drop the deadline and remember the task as finished."""
        async with self._pool.acquire() as conn:
            await finish_task(conn, correlation_id)
