"""Every SQL statement of the expirer: deadlines, watched and finished tasks, sweeps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg


@dataclass(frozen=True, slots=True)
class DueDeadline:
    """A deadline the scanner claimed because it has passed."""

    correlation_id: str
    task_id: str
    deadline_at: datetime


# Each write below is one statement, so one round trip and atomic without a transaction:
# the handlers run one per lifecycle event, and round trips were most of their cost.


async def store_deadline(
    conn: asyncpg.Connection, correlation_id: str, task_id: str, deadline_at: datetime
) -> bool:
    """Store a task's deadline, or move it later, unless the task is finished; return whether."""
    # Only later: heartbeats extend the deadline, and a replay of older events must not bring
    # back a deadline that may already have passed. A first deadline too: a heartbeat the
    # gateway took before the 2xx stores an earlier one, and the 2xx's own must replace it.
    # An upsert, not an update: when the scanner already fired the old deadline, the
    # dispatcher may still be waiting on the task, so the new deadline must be kept.
    # `open` has a row while the task is not finished; `watched` remembers the latest
    # deadline even after the scanner deletes the deadline row.
    stored = await conn.fetchval(
        """
        WITH open AS (
            SELECT WHERE NOT EXISTS (SELECT 1 FROM finished_tasks WHERE correlation_id = $1)
        ), stored AS (
            INSERT INTO deadlines (correlation_id, task_id, deadline_at)
            SELECT $1, $2, $3 FROM open
            -- Nor once it has fired: a replayed event would put the passed deadline back.
            WHERE NOT EXISTS (
                SELECT 1 FROM watched_tasks WHERE correlation_id = $1 AND deadline_at >= $3
            )
            ON CONFLICT (correlation_id) DO UPDATE
                SET deadline_at = EXCLUDED.deadline_at, updated_at = now()
                WHERE deadlines.deadline_at < EXCLUDED.deadline_at
            RETURNING true
        ), watched AS (
            INSERT INTO watched_tasks (correlation_id, task_id, deadline_at)
            SELECT $1, $2, $3 FROM open
            ON CONFLICT (correlation_id) DO UPDATE
                SET deadline_at = EXCLUDED.deadline_at, updated_at = now()
                WHERE watched_tasks.deadline_at < EXCLUDED.deadline_at
        )
        SELECT EXISTS (SELECT FROM stored)
        """,
        correlation_id,
        task_id,
        deadline_at,
    )
    return bool(stored)


async def finish_task(conn: asyncpg.Connection, correlation_id: str) -> None:
    """Forget a task's deadline and remember that the task is finished."""
    # The deadline first, then the watched task, as the scanner locks them: the main statement
    # runs before the others, and locking in the other order deadlocked with a firing deadline.
    await conn.execute(
        """
        WITH finished AS (
            INSERT INTO finished_tasks (correlation_id) VALUES ($1) ON CONFLICT DO NOTHING
        ), unwatched AS (
            DELETE FROM watched_tasks WHERE correlation_id = $1
        )
        DELETE FROM deadlines WHERE correlation_id = $1
        """,
        correlation_id,
    )


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
    if due:
        # The reconciliation sweep counts its grace from here.
        await conn.execute(
            "UPDATE watched_tasks SET announced_at = $1 WHERE correlation_id = ANY($2::text[])",
            now,
            [deadline.correlation_id for deadline in due],
        )
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


@dataclass(frozen=True, slots=True)
class WatchedTask:
    """A dispatched, unfinished task as the reconciliation sweep sees it."""

    correlation_id: str
    task_id: str
    deadline_at: datetime
    reannounced: int


async def restore_missing_deadlines(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[WatchedTask]:
    """Give back its deadline to each unfinished task whose deadline is ahead but not stored."""
    # A deadline still ahead has not fired, so a watched task without one has lost it.
    rows = await conn.fetch(
        """
        INSERT INTO deadlines (correlation_id, task_id, deadline_at)
        SELECT w.correlation_id, w.task_id, w.deadline_at
        FROM watched_tasks w
        WHERE w.deadline_at > $1
          AND NOT EXISTS (SELECT 1 FROM deadlines d WHERE d.correlation_id = w.correlation_id)
          AND NOT EXISTS (SELECT 1 FROM finished_tasks f WHERE f.correlation_id = w.correlation_id)
        LIMIT $2
        ON CONFLICT (correlation_id) DO NOTHING
        RETURNING correlation_id, task_id, deadline_at, 0 AS reannounced
        """,
        now,
        limit,
    )
    return [_watched(row) for row in rows]


async def take_stuck_tasks(
    conn: asyncpg.Connection, cutoff: datetime, now: datetime, limit: int
) -> list[WatchedTask]:
    """Claim unfinished tasks past their deadline, with none pending, unannounced since `cutoff`.

    Either the deadline was announced before `cutoff` and no terminal event
    followed (the announcement was lost or refused downstream), or it was lost
    before it fired. Claiming counts one more announcement; call inside the
    transaction that queues it.
    """
    rows = await conn.fetch(
        """
        UPDATE watched_tasks w
        SET reannounced = reannounced + 1, announced_at = $2, updated_at = now()
        WHERE w.correlation_id IN (
            SELECT s.correlation_id FROM watched_tasks s
            WHERE s.deadline_at <= $2
              AND (s.announced_at IS NULL OR s.announced_at <= $1)
              AND NOT EXISTS (
                  SELECT 1 FROM deadlines d WHERE d.correlation_id = s.correlation_id
              )
            ORDER BY s.deadline_at
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        RETURNING correlation_id, task_id, deadline_at, reannounced
        """,
        cutoff,
        now,
        limit,
    )
    return sorted((_watched(row) for row in rows), key=lambda task: task.deadline_at)


LeftoverTable = Literal["deadlines", "watched_tasks"]
"""The tables that hold a row per open task, and so none for a finished one."""


async def drop_finished_leftovers(
    conn: asyncpg.Connection, table: LeftoverTable, after: str, limit: int
) -> tuple[list[str], str | None]:
    """Delete, of the `limit` rows of `table` next after `after`, those of finished tasks.

    Return the ids deleted and the last id looked at, None once no row is left to look at.
    Each call reads at most `limit` rows of `table`, and `finished_tasks` by its key: the
    sweep stays short however many tasks are open or finished.
    """
    if table not in ("deadlines", "watched_tasks"):
        raise ValueError(f"not a table of open tasks: {table!r}")
    row = await conn.fetchrow(
        f"""
        WITH chunk AS (
            SELECT correlation_id FROM {table}
            WHERE correlation_id > $1 ORDER BY correlation_id LIMIT $2
        ), dropped AS (
            DELETE FROM {table} AS t USING chunk AS c, finished_tasks AS f
            WHERE t.correlation_id = c.correlation_id AND f.correlation_id = c.correlation_id
            RETURNING t.correlation_id
        )
        SELECT (SELECT max(correlation_id) FROM chunk) AS last,
               ARRAY(SELECT correlation_id FROM dropped) AS dropped
        """,  # noqa: S608 (the table is one of two names checked above)
        after,
        limit,
    )
    assert row is not None
    return sorted(row["dropped"]), row["last"]


async def prune_finished_tasks(conn: asyncpg.Connection, before: datetime, limit: int) -> int:
    """Forget up to `limit` tombstones of tasks finished before `before`; return how many."""
    deleted: int = await conn.fetchval(
        """
        WITH pruned AS (
            DELETE FROM finished_tasks
            WHERE correlation_id IN (
                SELECT correlation_id FROM finished_tasks
                WHERE finished_at < $1
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            RETURNING 1
        )
        SELECT count(*) FROM pruned
        """,
        before,
        limit,
    )
    return deleted


def _watched(row: asyncpg.Record) -> WatchedTask:
    return WatchedTask(
        row["correlation_id"], row["task_id"], row["deadline_at"], row["reannounced"]
    )


class PostgresDeadlineStore:
    """The handlers' view of the deadline tables, one pooled connection per call."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def store(self, correlation_id: str, task_id: str, deadline_at: datetime) -> bool:
        """Store a deadline, or move it later; return whether it was stored."""
        async with self._pool.acquire() as conn:
            return await store_deadline(conn, correlation_id, task_id, deadline_at)

    async def finish(self, correlation_id: str) -> None:
        """Drop the deadline and remember the task as finished."""
        async with self._pool.acquire() as conn:
            await finish_task(conn, correlation_id)
