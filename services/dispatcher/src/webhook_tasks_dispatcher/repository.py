"""Every SQL statement of the dispatcher. Transitions are conditional updates: first one wins."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr

from .client import DeliveryResult
from .domain import OPEN_STATUSES, TaskStatus

_OPEN = [status.value for status in OPEN_STATUSES]


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task as first recorded, before its request is sent."""

    correlation_id: str
    idempotency_key: str
    task_id: str
    user_id: str
    project_id: str
    assistant_id: str | None
    followers: list[str]
    webhook_url: str
    mode: str
    timeout_seconds: int
    auth_fingerprints: str | None = None
    """Keyed fingerprints of webhookAuth, to mask it where a callback echoes it."""
    earlier_idempotency_key: str | None = None
    """The key an earlier release gave the same request (task ids holding "/" or "%")."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task as stored."""

    correlation_id: str
    task_id: str
    user_id: str
    project_id: str
    assistant_id: str | None
    followers: list[str]
    webhook_url: str
    mode: str
    timeout_seconds: int
    status: TaskStatus
    status_reason: str | None
    result_url: str | None
    result_metadata: dict[str, Any] | None
    ack_status: str | None
    estimated_completion: str | None
    progress: float | None
    progress_message: str | None
    deadline_at: datetime | None
    created_at: datetime
    updated_at: datetime
    dispatched_at: datetime | None
    finished_at: datetime | None
    late_result_at: datetime | None = None
    traceparent: str | None = None
    """The trace of the task's dispatch (tracing on only); its events continue it."""

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> TaskRow:
        """Build a row from a `SELECT *` record."""
        metadata = record["result_metadata"]
        return cls(
            correlation_id=record["correlation_id"],
            task_id=record["task_id"],
            user_id=record["user_id"],
            project_id=record["project_id"],
            assistant_id=record["assistant_id"],
            followers=list(record["followers"]),
            webhook_url=record["webhook_url"],
            mode=record["mode"],
            timeout_seconds=record["timeout_seconds"],
            status=TaskStatus(record["status"]),
            status_reason=record["status_reason"],
            result_url=record["result_url"],
            result_metadata=json.loads(metadata) if metadata is not None else None,
            ack_status=record["ack_status"],
            estimated_completion=record["estimated_completion"],
            progress=record["progress"],
            progress_message=record["progress_message"],
            deadline_at=record["deadline_at"],
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            dispatched_at=record["dispatched_at"],
            finished_at=record["finished_at"],
            late_result_at=record["late_result_at"],
            traceparent=record["traceparent"],
        )


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A task's request that may still be sent, as claimed by one sender."""

    correlation_id: str
    webhook_url: str
    mode: str
    body: bytes
    auth: SecretStr | None = field(repr=False)
    attempts: int
    """How many requests were sent before this one."""
    timeout_seconds: float
    pending_since: datetime
    """When the task's request was recorded: it may stay pending only so long after."""
    traceparent: str | None = None
    """The dispatch's trace (W3C traceparent); None when tracing is off."""

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> PendingRequest:
        """Build from a `dispatch_requests` record."""
        auth = record["auth"]
        return cls(
            correlation_id=record["correlation_id"],
            webhook_url=record["webhook_url"],
            mode=record["mode"],
            body=bytes(record["body"]),
            auth=SecretStr(auth) if auth is not None else None,
            attempts=record["attempts"],
            timeout_seconds=record["timeout_seconds"],
            pending_since=record["pending_since"],
            traceparent=record["traceparent"],
        )


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One request sent to an external service."""

    correlation_id: str
    attempt: int
    started_at: datetime
    latency_ms: float
    status_code: int | None
    outcome: str
    error: str | None
    response_body: str | None
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One callback or deadline the dispatcher saw, and what it did with it."""

    event_id: str
    kind: str
    outcome: str
    detail: str | None
    from_status: str | None
    to_status: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A new task with its first request, to record together."""

    task: NewTask
    request: PendingRequest
    created_at: datetime
    lease_until: datetime
    """No other replica sends the request before this."""
    due_at: datetime
    """When the background sender may take the request."""
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Acceptance:
    """An external service's acceptance of a task's request."""

    correlation_id: str
    started_at: datetime
    result: DeliveryResult
    settled_at: datetime
    deadline_at: datetime
    ack_status: str | None
    estimated_completion: str | None


async def insert_tasks(conn: asyncpg.Connection, claims: Sequence[Claim]) -> set[str]:
    """Record new pending tasks with their requests; return the ids of those not known before.

    One statement for the whole batch: a task whose idempotency key is known is skipped,
    and so is its request.
    """
    records = await conn.fetch(
        """
        WITH input AS (
            SELECT * FROM unnest(
                $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::integer[], $11::timestamptz[],
                $12::timestamptz[], $13::bytea[], $14::text[], $15::timestamptz[],
                $16::double precision[], $17::text[], $18::text[], $19::text[]
            ) AS c(
                correlation_id, idempotency_key, task_id, user_id, project_id, assistant_id,
                followers, webhook_url, mode, timeout_seconds, created_at, lease_until, body,
                auth, due_at, lease_seconds, traceparent, auth_fingerprints, earlier_key
            )
        ), recorded AS (
            INSERT INTO tasks (
                correlation_id, idempotency_key, task_id, user_id, project_id, assistant_id,
                followers, webhook_url, mode, timeout_seconds, status, claimed_until,
                created_at, updated_at, traceparent, auth_fingerprints
            )
            SELECT correlation_id, idempotency_key, task_id, user_id, project_id, assistant_id,
                ARRAY(SELECT jsonb_array_elements_text(followers::jsonb)), webhook_url, mode,
                timeout_seconds, 'pending', lease_until, created_at, created_at, traceparent,
                auth_fingerprints
            FROM input
            WHERE earlier_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM tasks
                WHERE tasks.idempotency_key = input.earlier_key AND tasks.task_id = input.task_id
            )
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING correlation_id
        )
        INSERT INTO dispatch_requests (
            correlation_id, webhook_url, mode, body, auth, attempts, next_attempt_at,
            lease_seconds, timeout_seconds, traceparent, pending_since
        )
        SELECT correlation_id, webhook_url, mode, body, auth, 0, due_at, lease_seconds,
            timeout_seconds, traceparent, created_at
        FROM input JOIN recorded USING (correlation_id)
        RETURNING correlation_id
        """,
        [claim.task.correlation_id for claim in claims],
        [claim.task.idempotency_key for claim in claims],
        [claim.task.task_id for claim in claims],
        [claim.task.user_id for claim in claims],
        [claim.task.project_id for claim in claims],
        [claim.task.assistant_id for claim in claims],
        [json.dumps(claim.task.followers) for claim in claims],
        [claim.task.webhook_url for claim in claims],
        [claim.task.mode for claim in claims],
        [claim.task.timeout_seconds for claim in claims],
        [claim.created_at for claim in claims],
        [claim.lease_until for claim in claims],
        [claim.request.body for claim in claims],
        [
            claim.request.auth.get_secret_value() if claim.request.auth is not None else None
            for claim in claims
        ],
        [claim.due_at for claim in claims],
        [claim.lease_seconds for claim in claims],
        [claim.request.traceparent for claim in claims],
        [claim.task.auth_fingerprints for claim in claims],
        [claim.task.earlier_idempotency_key for claim in claims],
    )
    return {record["correlation_id"] for record in records}


async def settle_accepted(
    conn: asyncpg.Connection, accepted: Sequence[Acceptance]
) -> list[TaskRow]:
    """Record accepted requests, drop them, and move their tasks pending -> initiated.

    Return the tasks that moved; one that a fast callback already moved is not among them.
    """
    records = await conn.fetch(
        """
        WITH input AS (
            SELECT * FROM unnest(
                $1::text[], $2::timestamptz[], $3::double precision[], $4::integer[],
                $5::text[], $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[]
            ) AS i(
                correlation_id, started_at, latency_ms, status_code, response_body,
                settled_at, deadline_at, ack_status, estimated_completion
            )
        ), recorded AS (
            INSERT INTO dispatch_attempts (
                correlation_id, attempt, started_at, latency_ms, status_code, outcome,
                response_body
            )
            SELECT i.correlation_id,
                coalesce(
                    (SELECT max(a.attempt) FROM dispatch_attempts AS a
                     WHERE a.correlation_id = i.correlation_id),
                    0
                ) + 1,
                i.started_at, i.latency_ms, i.status_code, 'accepted', i.response_body
            FROM input AS i
        ), forgotten AS (
            DELETE FROM dispatch_requests AS r USING input AS i
            WHERE r.correlation_id = i.correlation_id
        )
        UPDATE tasks AS t SET status = 'initiated',
            -- A heartbeat taken before the 2xx may have set a later one: it stands.
            deadline_at = greatest(t.deadline_at, i.deadline_at),
            dispatched_at = i.settled_at, updated_at = i.settled_at, ack_status = i.ack_status,
            estimated_completion = i.estimated_completion, claimed_until = NULL,
            status_reason = NULL
        FROM input AS i
        WHERE t.correlation_id = i.correlation_id AND t.status = 'pending'
        RETURNING t.*
        """,
        [item.correlation_id for item in accepted],
        [item.started_at for item in accepted],
        [item.result.latency_ms for item in accepted],
        [item.result.status_code for item in accepted],
        [item.result.response_body for item in accepted],
        [item.settled_at for item in accepted],
        [item.deadline_at for item in accepted],
        [item.ack_status for item in accepted],
        [item.estimated_completion for item in accepted],
    )
    return [TaskRow.from_record(record) for record in records]


async def claim_due_requests(
    conn: asyncpg.Connection, *, now: datetime, limit: int
) -> list[PendingRequest]:
    """Claim up to `limit` due requests for one lease each; replicas skip each other's rows."""
    records = await conn.fetch(
        """
        UPDATE dispatch_requests AS r
        SET next_attempt_at = $1::timestamptz + make_interval(secs => r.lease_seconds)
        FROM (
            SELECT correlation_id FROM dispatch_requests
            WHERE next_attempt_at <= $1
            ORDER BY next_attempt_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE r.correlation_id = due.correlation_id
        RETURNING r.*
        """,
        now,
        limit,
    )
    return [PendingRequest.from_record(record) for record in records]


async def next_request_due(conn: asyncpg.Connection) -> datetime | None:
    """Return when the earliest kept request is due, or None if none is kept."""
    due: datetime | None = await conn.fetchval("SELECT min(next_attempt_at) FROM dispatch_requests")
    return due


async def reschedule_request(
    conn: asyncpg.Connection, correlation_id: str, *, attempts: int, due_at: datetime
) -> bool:
    """Set when to send again and how many were sent; False if the request is gone."""
    updated = await conn.fetchval(
        """
        UPDATE dispatch_requests SET attempts = $2, next_attempt_at = $3
        WHERE correlation_id = $1
        RETURNING true
        """,
        correlation_id,
        attempts,
        due_at,
    )
    return bool(updated)


async def release_requests(
    conn: asyncpg.Connection, correlation_ids: list[str], *, now: datetime
) -> None:
    """Make claimed requests due now (their sender is stopping before it finished)."""
    await conn.execute(
        "UPDATE dispatch_requests SET next_attempt_at = $2 WHERE correlation_id = ANY($1::text[])",
        correlation_ids,
        now,
    )


async def release_held_requests(
    conn: asyncpg.Connection, held_until: Mapping[str, datetime], *, now: datetime
) -> int:
    """Make requests due now that are still held until the time given; return how many."""
    # A row whose time moved since (claimed by a sender, or held again) is left as it is.
    updated: int = await conn.fetchval(
        """
        WITH released AS (
            UPDATE dispatch_requests r SET next_attempt_at = $3
            FROM unnest($1::text[], $2::timestamptz[]) AS held (correlation_id, until)
            WHERE r.correlation_id = held.correlation_id AND r.next_attempt_at = held.until
            RETURNING 1
        )
        SELECT count(*) FROM released
        """,
        list(held_until),
        list(held_until.values()),
        now,
    )
    return updated


async def forget_request(conn: asyncpg.Connection, correlation_id: str) -> None:
    """Drop a task's kept request (and its secret): the task no longer waits to be sent."""
    await conn.execute("DELETE FROM dispatch_requests WHERE correlation_id = $1", correlation_id)


async def note_waiting(
    conn: asyncpg.Connection, correlation_id: str, *, now: datetime, reason: str
) -> None:
    """Say on a pending task why it waits (shown by `show`)."""
    await conn.execute(
        """
        UPDATE tasks SET status_reason = $3, updated_at = $2
        WHERE correlation_id = $1 AND status = 'pending'
        """,
        correlation_id,
        now,
        reason,
    )


async def record_attempt(
    conn: asyncpg.Connection,
    correlation_id: str,
    started_at: datetime,
    result: DeliveryResult,
    *,
    retry_at: datetime | None = None,
) -> int:
    """Store one request's outcome; return its attempt number."""
    attempt: int = await conn.fetchval(
        """
        INSERT INTO dispatch_attempts (
            correlation_id, attempt, started_at, latency_ms, status_code, outcome, error,
            response_body, retry_at
        )
        SELECT $1, coalesce(max(attempt), 0) + 1, $2, $3, $4, $5, $6, $7, $8
        FROM dispatch_attempts WHERE correlation_id = $1
        RETURNING attempt
        """,
        correlation_id,
        started_at,
        result.latency_ms,
        result.status_code,
        result.outcome,
        result.error,
        result.response_body,
        retry_at,
    )
    return attempt


async def mark_initiated(
    conn: asyncpg.Connection, correlation_id: str, *, now: datetime, deadline_at: datetime
) -> TaskRow | None:
    """pending -> initiated (one task; `settle_accepted` does many); None if already moved."""
    record = await conn.fetchrow(
        """
        UPDATE tasks SET status = 'initiated', deadline_at = $3, dispatched_at = $2,
            updated_at = $2, claimed_until = NULL, status_reason = NULL
        WHERE correlation_id = $1 AND status = 'pending'
        RETURNING *
        """,
        correlation_id,
        now,
        deadline_at,
    )
    return TaskRow.from_record(record) if record else None


async def finish(
    conn: asyncpg.Connection,
    correlation_id: str,
    status: TaskStatus,
    *,
    now: datetime,
    reason: str | None = None,
    result_url: str | None = None,
    result_metadata: dict[str, Any] | None = None,
    only_if_deadline_not_after: datetime | None = None,
) -> TaskRow | None:
    """Move an open task to a terminal `status`, dropping its kept request; None if not open.

    With `only_if_deadline_not_after`, a task whose deadline has since moved later
    (a progress heartbeat arrived) is left open.
    """
    # A finished task is never sent again: its request (and sealed secret) goes in the same
    # statement, a round trip fewer for every callback.
    record = await conn.fetchrow(
        """
        WITH finished AS (
            UPDATE tasks SET status = $2, status_reason = $4, result_url = $5,
                result_metadata = $6::jsonb, finished_at = $3, updated_at = $3,
                claimed_until = NULL
            WHERE correlation_id = $1 AND status = ANY($7::text[])
              AND ($8::timestamptz IS NULL OR deadline_at IS NULL OR deadline_at <= $8)
            RETURNING *
        ), forgotten AS (
            DELETE FROM dispatch_requests
            WHERE correlation_id = $1 AND EXISTS (SELECT FROM finished)
        )
        SELECT * FROM finished
        """,
        correlation_id,
        status.value,
        now,
        reason,
        result_url,
        json.dumps(result_metadata) if result_metadata is not None else None,
        _OPEN,
        only_if_deadline_not_after,
    )
    return TaskRow.from_record(record) if record else None


async def record_progress(
    conn: asyncpg.Connection,
    correlation_id: str,
    *,
    now: datetime,
    taken_at: datetime,
    progress: float | None,
    message: str | None,
) -> TaskRow | None:
    """Extend an open task's deadline by its timeout from when the heartbeat was taken.

    Return None if the task is not open. From `taken_at` (the gateway's time), not from
    when it is applied: a dispatcher that was stopped or lagging must not extend it more.
    """
    record = await conn.fetchrow(
        """
        UPDATE tasks SET progress = coalesce($3, progress), progress_message = $4,
            deadline_at = greatest(
                deadline_at,
                least($2::timestamptz, $6::timestamptz) + make_interval(secs => timeout_seconds)
            ),
            updated_at = $2
        WHERE correlation_id = $1 AND status = ANY($5::text[])
        RETURNING *
        """,
        correlation_id,
        now,
        progress,
        message,
        _OPEN,
        taken_at,
    )
    return TaskRow.from_record(record) if record else None


async def record_late_result(
    conn: asyncpg.Connection,
    correlation_id: str,
    *,
    now: datetime,
    result_url: str | None,
    result_metadata: dict[str, Any],
) -> TaskRow | None:
    """Keep the first result that arrived after expiry; None if one was kept already."""
    record = await conn.fetchrow(
        """
        UPDATE tasks SET result_url = $3, result_metadata = $4::jsonb, updated_at = $2,
            late_result_at = $2
        WHERE correlation_id = $1 AND status = 'expired' AND late_result_at IS NULL
        RETURNING *
        """,
        correlation_id,
        now,
        result_url,
        json.dumps(result_metadata),
    )
    return TaskRow.from_record(record) if record else None


@dataclass(frozen=True, slots=True)
class Sighting:
    """What a consumed event found: whether it is new, and the task it is about."""

    first: bool
    """False for an event seen before (a redelivery)."""
    status: TaskStatus | None
    """The task's state, locked until the transaction ends (None: no such task)."""
    traceparent: str | None
    """The trace of the task's dispatch, when it was traced."""
    auth_fingerprints: str | None = None
    """Keyed fingerprints of the task's webhookAuth, when it had one."""
    deadline_at: datetime | None = None
    """When the task expires unless a callback comes first (None until it is initiated)."""


async def lock_and_record(
    conn: asyncpg.Connection,
    *,
    event_id: str,
    correlation_id: str,
    kind: str,
    now: datetime,
) -> Sighting:
    """Lock the task's row until the transaction ends and note that the event was seen.

    One statement, so one round trip, for what every consumed event does first.
    """
    record = await conn.fetchrow(
        """
        WITH task AS (
            SELECT status, traceparent, auth_fingerprints, deadline_at
            FROM tasks WHERE correlation_id = $2 FOR UPDATE
        ), seen AS (
            INSERT INTO task_history (event_id, correlation_id, kind, outcome, recorded_at)
            VALUES ($1, $2, $3, 'ignored', $4)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING true AS first
        )
        SELECT (SELECT status FROM task) AS status,
            (SELECT traceparent FROM task) AS traceparent,
            (SELECT auth_fingerprints FROM task) AS auth_fingerprints,
            (SELECT deadline_at FROM task) AS deadline_at,
            coalesce((SELECT first FROM seen), false) AS first
        """,
        event_id,
        correlation_id,
        kind,
        now,
    )
    status = record["status"]
    return Sighting(
        first=bool(record["first"]),
        status=TaskStatus(status) if status is not None else None,
        traceparent=record["traceparent"],
        auth_fingerprints=record["auth_fingerprints"],
        deadline_at=record["deadline_at"],
    )


async def settle_history(
    conn: asyncpg.Connection,
    event_id: str,
    *,
    applied: bool,
    detail: str | None,
    from_status: str | None,
    to_status: str | None,
) -> None:
    """Record what the event did to the task."""
    await conn.execute(
        """
        UPDATE task_history SET outcome = $2, detail = $3, from_status = $4, to_status = $5
        WHERE event_id = $1
        """,
        event_id,
        "applied" if applied else "ignored",
        detail,
        from_status,
        to_status,
    )


async def find_tasks(conn: asyncpg.Connection, task_or_correlation_id: str) -> list[TaskRow]:
    """Return the task with this correlation id, or every run of this task id, oldest first."""
    records = await conn.fetch(
        "SELECT * FROM tasks WHERE correlation_id = $1 OR task_id = $1 ORDER BY created_at",
        task_or_correlation_id,
    )
    return [TaskRow.from_record(record) for record in records]


async def attempts_for(conn: asyncpg.Connection, correlation_id: str) -> list[AttemptRow]:
    """Return the requests sent for a task, in order."""
    records = await conn.fetch(
        "SELECT * FROM dispatch_attempts WHERE correlation_id = $1 ORDER BY attempt",
        correlation_id,
    )
    return [AttemptRow(**dict(record)) for record in records]


async def history_for(conn: asyncpg.Connection, correlation_id: str) -> list[HistoryRow]:
    """Return the callbacks and deadlines seen for a task, in order."""
    records = await conn.fetch(
        """
        SELECT event_id::text AS event_id, kind, outcome, detail, from_status, to_status,
            recorded_at
        FROM task_history WHERE correlation_id = $1 ORDER BY seq
        """,
        correlation_id,
    )
    return [HistoryRow(**dict(record)) for record in records]
