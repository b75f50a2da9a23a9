"""Every SQL statement of the notifier: comments and notifications in its own schema."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from webhook_tasks_contracts import CommentKind, LifecycleEvent

_COMMENT_COLUMNS = "id, correlation_id, task_id, kind, text, created_at, updated_at"
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


@dataclass(frozen=True, slots=True)
class Notification:
    """One user told about a task's terminal comment."""

    id: int
    correlation_id: str
    comment_id: int
    user_id: str
    kind: CommentKind
    created_at: datetime


async def insert_terminal_comment(
    conn: asyncpg.Connection, event: LifecycleEvent, kind: CommentKind, text: str
) -> Comment | None:
    """Write the task's terminal comment; return None if it already has one."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO comments (correlation_id, task_id, project_id, kind, text,
                              source_event_id, source_occurred_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (correlation_id) WHERE kind <> 'progress' DO NOTHING
        RETURNING {_COMMENT_COLUMNS}
        """,  # noqa: S608 - only the fixed column list is interpolated
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
    # than the one the comment shows, so a replayed topic leaves the comment as it was.
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
                updated_at = now()
            WHERE comments.source_occurred_at < EXCLUDED.source_occurred_at
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
        ON CONFLICT (correlation_id, user_id) DO NOTHING
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
