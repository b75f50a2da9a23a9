"""Every SQL statement of the notifier: comments and notifications in its own schema."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
from webhook_tasks_contracts import CommentKind, LifecycleEvent

_COMMENT_COLUMNS = "id, correlation_id, task_id, kind, text, revision, created_at, updated_at"
_NOTIFICATION_COLUMNS = "id, correlation_id, comment_id, user_id, kind, created_at"


@dataclass(frozen=True, slots=True)
class Comment:
    """A chat comment the notifier wrote on a task."""

    id: int
    correlation_id: str
    task_id: str
    kind: CommentKind
    text: str
    created_at: datetime
    updated_at: datetime
    revision: int = 1
    """1 for the comment's first text, one more for each new text."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One user told about a task's terminal comment."""

    id: int
    correlation_id: str
    comment_id: int
    user_id: str
    kind: CommentKind
    created_at: datetime


_ONE_COMMENT_OF_ITS_KIND = {
    # Each conflict target names the partial unique index that keeps the comment single.
    "terminal": "ON CONFLICT (correlation_id) WHERE kind NOT IN ('progress', 'late_result')",
    "late_result": "ON CONFLICT (correlation_id) WHERE kind = 'late_result'",
}


async def insert_terminal_comment(
    conn: asyncpg.Connection, event: LifecycleEvent, kind: CommentKind, text: str
) -> Comment | None:
    """Write the task's terminal comment; return None if it already has one."""
    return await _insert_once(conn, event, kind, text, _ONE_COMMENT_OF_ITS_KIND["terminal"])


async def insert_late_result_comment(
    conn: asyncpg.Connection, event: LifecycleEvent, text: str
) -> Comment | None:
    """Write the task's one late-result comment; return None if it already has one."""
    return await _insert_once(
        conn, event, "late_result", text, _ONE_COMMENT_OF_ITS_KIND["late_result"]
    )


async def _insert_once(
    conn: asyncpg.Connection, event: LifecycleEvent, kind: CommentKind, text: str, conflict: str
) -> Comment | None:
    row = await conn.fetchrow(
        f"""
        INSERT INTO comments (correlation_id, task_id, project_id, kind, text,
                              source_event_id, source_occurred_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        {conflict} DO NOTHING
        RETURNING {_COMMENT_COLUMNS}
        """,  # noqa: S608 - only fixed SQL fragments are interpolated
        event.correlation_id,
        event.task.task_id,
        event.task.project_id,
        kind,
        text,
        event.event_id,
        event.occurred_at,
    )
    return _comment(row) if row is not None else None


async def upsert_progress_comment(
    conn: asyncpg.Connection, event: LifecycleEvent, text: str
) -> Comment | None:
    """Write or update the task's progress comment; return None if nothing changed."""
    # Nothing changes once the task has a terminal comment, nor for an event no newer
    # than the one the comment shows, so a replayed topic leaves the comment as it was,
    # nor for one whose text the comment already shows.
    # The revision moves with the text, under the row's lock: no two texts share one.
    row = await conn.fetchrow(
        f"""
        INSERT INTO comments (correlation_id, task_id, project_id, kind, text,
                              source_event_id, source_occurred_at)
        SELECT $1::text, $2::text, $3::text, 'progress', $4::text, $5::uuid, $6::timestamptz
        WHERE NOT EXISTS (
            SELECT 1 FROM comments WHERE correlation_id = $1 AND kind <> 'progress'
        )
        ON CONFLICT (correlation_id) WHERE kind = 'progress' DO UPDATE
            SET text = EXCLUDED.text,
                source_event_id = EXCLUDED.source_event_id,
                source_occurred_at = EXCLUDED.source_occurred_at,
                revision = comments.revision + 1,
                updated_at = now()
            WHERE comments.source_occurred_at < EXCLUDED.source_occurred_at
                -- A heartbeat repeating the shown text is no edit: a service reporting
                -- "50%" every ten seconds must not announce (and POST) the same text again.
                AND comments.text <> EXCLUDED.text
        RETURNING {_COMMENT_COLUMNS}
        """,  # noqa: S608 - only the fixed column list is interpolated
        event.correlation_id,
        event.task.task_id,
        event.task.project_id,
        text,
        event.event_id,
        event.occurred_at,
    )
    return _comment(row) if row is not None else None


async def end_progress_comment(
    conn: asyncpg.Connection, event: LifecycleEvent, text: str
) -> Comment | None:
    """Give the task's progress comment its last text; return None if the task has none."""
    # Called with the task's terminal comment, in its transaction: once, as that comment is.
    row = await conn.fetchrow(
        f"""
        UPDATE comments
        SET text = $2, source_event_id = $3, source_occurred_at = $4, revision = revision + 1,
            updated_at = now()
        WHERE correlation_id = $1 AND kind = 'progress'
        RETURNING {_COMMENT_COLUMNS}
        """,  # noqa: S608 - only the fixed column list is interpolated
        event.correlation_id,
        text,
        event.event_id,
        event.occurred_at,
    )
    return _comment(row) if row is not None else None


async def insert_notifications(
    conn: asyncpg.Connection, comment: Comment, user_ids: Sequence[str]
) -> list[Notification]:
    """Record that each user is told about `comment`; return the rows that are new."""
    rows = await conn.fetch(
        f"""
        INSERT INTO notifications (correlation_id, comment_id, user_id, kind)
        SELECT $1, $2, user_id, $3
        FROM unnest($4::text[]) WITH ORDINALITY AS users (user_id, position)
        ORDER BY position
        ON CONFLICT (correlation_id, user_id, kind) DO NOTHING
        RETURNING {_NOTIFICATION_COLUMNS}
        """,  # noqa: S608 - only the fixed column list is interpolated
        comment.correlation_id,
        comment.id,
        comment.kind,
        list(user_ids),
    )
    return sorted((_notification(row) for row in rows), key=lambda notification: notification.id)


async def comments_for(conn: asyncpg.Connection, correlation_ids: list[str]) -> list[Comment]:
    """Return the comments on the given tasks, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COMMENT_COLUMNS} FROM comments"  # noqa: S608 - fixed column list
        " WHERE correlation_id = ANY($1::text[]) ORDER BY id",
        correlation_ids,
    )
    return [_comment(row) for row in rows]


async def notifications_for(
    conn: asyncpg.Connection, correlation_ids: list[str]
) -> list[Notification]:
    """Return the notifications about the given tasks, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"  # noqa: S608 - fixed column list
        " WHERE correlation_id = ANY($1::text[]) ORDER BY id",
        correlation_ids,
    )
    return [_notification(row) for row in rows]


def _comment(row: asyncpg.Record) -> Comment:
    return Comment(
        id=row["id"],
        correlation_id=row["correlation_id"],
        task_id=row["task_id"],
        kind=row["kind"],
        text=row["text"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revision=row["revision"],
    )


def _notification(row: asyncpg.Record) -> Notification:
    return Notification(
        id=row["id"],
        correlation_id=row["correlation_id"],
        comment_id=row["comment_id"],
        user_id=row["user_id"],
        kind=row["kind"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    """An announcement to queue for the sink; a comment's text names the comment and revision."""

    event_id: UUID
    correlation_id: str
    payload: bytes
    comment_id: int | None = None
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class SinkDelivery:
    """One announcement to POST to the HTTP sink, and how often that was tried."""

    id: int
    event_id: UUID
    correlation_id: str
    payload: bytes
    attempts: int
    superseded: int = 0
    """How many older texts of the same comment, still pending, its claim deleted unsent."""


async def queue_sink_deliveries(
    conn: asyncpg.Connection, deliveries: Sequence[QueuedDelivery], now: datetime
) -> None:
    """Queue announcements for the sink; an event already queued is kept."""
    await conn.executemany(
        """
        INSERT INTO sink_deliveries
            (event_id, correlation_id, payload, comment_id, revision, next_attempt_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (event_id) DO NOTHING
        """,
        [
            (
                item.event_id,
                item.correlation_id,
                item.payload,
                item.comment_id,
                item.revision,
                now,
            )
            for item in deliveries
        ],
    )


# Taken by every replica's claim in turn (keyed by schema, as deployments may share a database).
_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('sink claim:' || current_schema(), 0))"


async def claim_sink_deliveries(
    conn: asyncpg.Connection, now: datetime, lease_until: datetime, limit: int
) -> list[SinkDelivery]:
    """Claim up to `limit` due deliveries until `lease_until`, counting one more attempt each.

    Of a comment's pending texts only the newest is claimed, and only while none is in flight;
    the older ones are deleted unsent with its claim, as the newer text replaces them.
    """
    # The lease, not a held transaction, keeps other replicas off while the POST runs;
    # a replica that dies mid-POST leaves the row to be tried again when the lease ends.
    async with conn.transaction():
        # Two claims at once could each take another text of one comment, neither seeing the
        # other's lease: they take turns, each statement seeing what the one before leased.
        await conn.execute(_CLAIM_LOCK)
        rows = await conn.fetch(
            """
            WITH due AS (
                SELECT id FROM sink_deliveries AS d
                WHERE failed_at IS NULL AND next_attempt_at <= $1
                  AND (comment_id IS NULL OR NOT EXISTS (
                      SELECT 1 FROM sink_deliveries AS other
                      WHERE other.comment_id = d.comment_id AND other.failed_at IS NULL
                        AND other.id <> d.id
                        AND ((other.revision, other.id) > (d.revision, d.id)
                             OR other.in_flight_until > $1)
                  ))
                ORDER BY next_attempt_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            ),
            claimed AS (
                UPDATE sink_deliveries AS d
                SET attempts = attempts + 1, next_attempt_at = $2, in_flight_until = $2
                FROM due
                WHERE d.id = due.id
                RETURNING d.id, d.event_id, d.correlation_id, d.payload, d.attempts,
                          d.comment_id, d.revision
            ),
            superseded AS (
                DELETE FROM sink_deliveries AS older
                USING claimed
                WHERE older.comment_id = claimed.comment_id AND older.failed_at IS NULL
                  AND (older.revision, older.id) < (claimed.revision, claimed.id)
                RETURNING claimed.id AS by_id
            )
            SELECT claimed.id, event_id, correlation_id, payload, attempts,
                   (SELECT count(*) FROM superseded WHERE by_id = claimed.id) AS superseded
            FROM claimed
            """,
            now,
            lease_until,
            limit,
        )
    deliveries = [
        SinkDelivery(
            row["id"],
            row["event_id"],
            row["correlation_id"],
            bytes(row["payload"]),
            row["attempts"],
            row["superseded"],
        )
        for row in rows
    ]
    return sorted(deliveries, key=lambda delivery: delivery.id)


async def release_sink_deliveries(
    conn: asyncpg.Connection, delivery_ids: list[int], now: datetime
) -> None:
    """Make claimed deliveries due now, their attempt uncounted: their sender is stopping."""
    await conn.execute(
        """
        UPDATE sink_deliveries
        SET attempts = attempts - 1, next_attempt_at = $2, in_flight_until = NULL
        WHERE id = ANY($1::bigint[]) AND failed_at IS NULL
        """,
        delivery_ids,
        now,
    )


async def forget_sink_delivery(conn: asyncpg.Connection, delivery_id: int) -> None:
    """Delete a delivery the sink accepted."""
    await conn.execute("DELETE FROM sink_deliveries WHERE id = $1", delivery_id)


async def retry_sink_delivery_later(
    conn: asyncpg.Connection, delivery_id: int, error: str, next_attempt_at: datetime
) -> None:
    """Record a failed attempt and when to try again."""
    await conn.execute(
        """
        UPDATE sink_deliveries SET last_error = $2, next_attempt_at = $3, in_flight_until = NULL
        WHERE id = $1
        """,
        delivery_id,
        error,
        next_attempt_at,
    )


async def give_up_sink_delivery(
    conn: asyncpg.Connection, delivery_id: int, error: str, now: datetime
) -> None:
    """Record the last failed attempt of a delivery that will not be tried again."""
    await conn.execute(
        """
        UPDATE sink_deliveries SET last_error = $2, failed_at = $3, in_flight_until = NULL
        WHERE id = $1
        """,
        delivery_id,
        error,
        now,
    )


async def next_sink_attempt(conn: asyncpg.Connection) -> datetime | None:
    """Return when the earliest pending delivery can be claimed, if any."""
    # As the claim sees them: a comment's newest text, not before another of its texts has
    # left flight (greatest() skips a NULL), lest the loop wake for nothing it may take.
    value: datetime | None = await conn.fetchval(
        """
        SELECT min(greatest(d.next_attempt_at, (
            SELECT max(other.in_flight_until) FROM sink_deliveries AS other
            WHERE other.comment_id = d.comment_id AND other.failed_at IS NULL
              AND other.id <> d.id
        )))
        FROM sink_deliveries AS d
        WHERE d.failed_at IS NULL
          AND (d.comment_id IS NULL OR NOT EXISTS (
              SELECT 1 FROM sink_deliveries AS newer
              WHERE newer.comment_id = d.comment_id AND newer.failed_at IS NULL
                AND (newer.revision, newer.id) > (d.revision, d.id)
          ))
        """
    )
    return value


async def prune_finished_sink_deliveries(
    conn: asyncpg.Connection, before: datetime, limit: int
) -> int:
    """Delete up to `limit` deliveries given up on before `before`, oldest first; return how many.

    Pending deliveries are never touched, however old; delivered ones are already gone.
    """
    deleted: int = await conn.fetchval(
        """
        WITH pruned AS (
            DELETE FROM sink_deliveries
            WHERE id IN (
                SELECT id FROM sink_deliveries
                WHERE failed_at IS NOT NULL AND failed_at < $1
                ORDER BY failed_at
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
