"""What the dispatcher does with each input: dispatch a task, apply a callback or a deadline."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
from webhook_tasks_contracts import (
    CallbackReceived,
    CallbackTokens,
    DeadlineReached,
    LifecycleEvent,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
    TaskRequested,
    Topics,
    build_webhook_request,
    derived_event_id,
    utc_now,
)
from webhook_tasks_runtime.kafka import message_for
from webhook_tasks_runtime.outbox import add_to_outbox

from . import repository as repo
from .client import DeliveryResult, WebhookClient
from .domain import TaskStatus, status_after_callback, why_not_applied

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class Dispatcher:
    """The single writer of task state."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        webhooks: WebhookClient,
        tokens: CallbackTokens,
        callback_base_url: str,
        topics: Topics,
        after_commit: Callable[[], None],
        dispatch_lease: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._webhooks = webhooks
        self._tokens = tokens
        self._callback_base_url = callback_base_url
        self._topics = topics
        self._after_commit = after_commit
        self._lease = dispatch_lease
        self._clock = clock

    async def dispatch(self, request: TaskRequested) -> None:
        """Record the task and send its request, once, whatever is redelivered."""
        metadata = request.task_metadata
        if not metadata.is_webhook_task:
            logger.info("not a webhook task; ignored", extra={"task_id": request.task_id})
            return
        assert metadata.webhook_url is not None  # guaranteed by TaskMetadata's validation
        task = await self._claim(request, metadata.webhook_url)
        if task is None:
            logger.info(
                "duplicate task request; not dispatched again",
                extra={"task_id": request.task_id, "idempotency_key": request.idempotency_key},
            )
            return
        body = build_webhook_request(
            correlation_id=task.correlation_id,
            callback_url=self._tokens.callback_url(self._callback_base_url, task.correlation_id),
            prompt=request.prompt,
            task_id=request.task_id,
            user_id=request.user_id,
            project_id=request.project_id,
            params=metadata.webhook_params,
        )
        logger.info(
            "dispatching task",
            extra={
                "correlation_id": task.correlation_id,
                "task_id": task.task_id,
                "webhook_host": _host(task.webhook_url),
            },
        )
        started = self._clock()
        result = await self._webhooks.send(task.webhook_url, body, auth=metadata.webhook_auth)
        await self._settle_dispatch(task, started, result)

    async def _claim(self, request: TaskRequested, webhook_url: str) -> repo.TaskRow | None:
        now = self._clock()
        metadata = request.task_metadata
        new_task = repo.NewTask(
            correlation_id=str(uuid.uuid4()),
            idempotency_key=request.idempotency_key,
            task_id=request.task_id,
            user_id=request.user_id,
            project_id=request.project_id,
            assistant_id=request.assistant_id,
            followers=list(dict.fromkeys(request.followers)),
            webhook_url=webhook_url,
            mode=metadata.mode,
            timeout_seconds=metadata.timeout_seconds,
        )
        async with self._pool.acquire() as conn:
            lease_until = now + self._lease
            task = await repo.insert_task(conn, new_task, now=now, lease_until=lease_until)
            if task is None:
                task = await repo.reclaim_abandoned_task(
                    conn, request.idempotency_key, now=now, lease_until=lease_until
                )
        return task

    async def _settle_dispatch(
        self, task: repo.TaskRow, started: datetime, result: DeliveryResult
    ) -> None:
        now = self._clock()
        events: list[LifecycleEvent] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.record_attempt(conn, task.correlation_id, started, result)
            if result.outcome == "accepted":
                ack = result.ack
                row = await repo.mark_initiated(
                    conn,
                    task.correlation_id,
                    now=now,
                    deadline_at=now + timedelta(seconds=task.timeout_seconds),
                    ack_status=ack.status if ack else None,
                    estimated_completion=ack.estimated_completion if ack else None,
                )
                if row is not None:
                    events.append(_dispatched(row))
            else:
                row = await repo.finish(
                    conn, task.correlation_id, TaskStatus.FAILED, now=now, reason=result.reason
                )
                if row is not None:
                    events.append(_failed_dispatch(row, result))
            await self._queue(conn, events)
        self._after_commit()
        logger.info(
            "external service accepted the task"
            if result.outcome == "accepted"
            else "dispatch failed",
            extra={
                "correlation_id": task.correlation_id,
                "outcome": result.outcome,
                "status_code": result.status_code,
                "latency_ms": round(result.latency_ms, 1),
                "error": result.error,
            },
        )

    async def apply_callback(self, callback: CallbackReceived) -> None:
        """Apply a callback to its task if the task is still open; record it either way."""
        now = self._clock()
        target = status_after_callback(callback.status)
        kind = f"callback:{callback.status}"
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._first_sighting(
                conn, callback.event_id, callback.correlation_id, kind
            ):
                return
            before = await repo.current_status(conn, callback.correlation_id)
            if target is None:
                row = await repo.record_progress(
                    conn,
                    callback.correlation_id,
                    now=now,
                    progress=callback.progress,
                    message=callback.message,
                )
                event: LifecycleEvent | None = (
                    _progressed(row, callback) if row is not None else None
                )
            else:
                row = await repo.finish(
                    conn,
                    callback.correlation_id,
                    target,
                    now=now,
                    reason=callback.error if target is TaskStatus.FAILED else None,
                    result_url=callback.result_url,
                    result_metadata=callback.metadata if target is TaskStatus.COMPLETED else None,
                )
                event = _finished_by_callback(row, callback) if row is not None else None
            await self._settle(conn, callback.event_id, kind, before, row, event)
        self._after_commit()

    async def apply_deadline(self, deadline: DeadlineReached) -> None:
        """Expire the task if it is still open and its deadline has not moved since."""
        now = self._clock()
        kind = "deadline"
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._first_sighting(
                conn, deadline.event_id, deadline.correlation_id, kind
            ):
                return
            before = await repo.current_status(conn, deadline.correlation_id)
            row = await repo.finish(
                conn,
                deadline.correlation_id,
                TaskStatus.EXPIRED,
                now=now,
                reason="no callback before the deadline",
                only_if_deadline_not_after=deadline.deadline_at,
            )
            event = _expired(row) if row is not None else None
            await self._settle(conn, deadline.event_id, kind, before, row, event)
        self._after_commit()

    async def _first_sighting(
        self, conn: asyncpg.Connection, event_id: object, correlation_id: str, kind: str
    ) -> bool:
        # Locking the task row makes a callback and a deadline for one task take turns.
        await conn.execute(
            "SELECT 1 FROM tasks WHERE correlation_id = $1 FOR UPDATE", correlation_id
        )
        first = await repo.record_history(
            conn,
            event_id=str(event_id),
            correlation_id=correlation_id,
            kind=kind,
            now=self._clock(),
        )
        if not first:
            logger.info("event seen before; nothing to do", extra={"event_id": str(event_id)})
        return first

    async def _settle(
        self,
        conn: asyncpg.Connection,
        event_id: object,
        kind: str,
        before: TaskStatus | None,
        row: repo.TaskRow | None,
        event: LifecycleEvent | None,
    ) -> None:
        if row is not None and event is not None:
            await repo.settle_history(
                conn,
                str(event_id),
                applied=True,
                detail=None,
                from_status=before.value if before else None,
                to_status=row.status.value,
            )
            await self._queue(conn, [event])
            logger.info(
                f"{kind} applied", extra={"from_status": before, "to_status": row.status.value}
            )
            return
        # The task row is locked, so `before` is still its state: that is why nothing applied.
        ignored = why_not_applied(before, kind)
        await repo.settle_history(
            conn,
            str(event_id),
            applied=False,
            detail=ignored.reason,
            from_status=before.value if before else None,
            to_status=before.value if before else None,
        )
        logger.info(f"{kind} ignored", extra={"reason": ignored.reason})

    async def _queue(self, conn: asyncpg.Connection, events: list[LifecycleEvent]) -> None:
        await add_to_outbox(
            conn,
            [
                message_for(self._topics.task_lifecycle, event, key=event.correlation_id)
                for event in events
            ],
        )


def _ref(row: repo.TaskRow) -> TaskRef:
    return TaskRef(
        task_id=row.task_id,
        user_id=row.user_id,
        project_id=row.project_id,
        assistant_id=row.assistant_id,
        followers=tuple(row.followers),
    )


def _host(url: str) -> str:
    return urlsplit(url).hostname or "unknown"


def _dispatched(row: repo.TaskRow) -> TaskDispatched:
    assert row.deadline_at is not None
    return TaskDispatched(
        event_id=derived_event_id(row.correlation_id, "dispatched"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        timeout_seconds=row.timeout_seconds,
        webhook_host=_host(row.webhook_url),
        ack_status=row.ack_status,
        estimated_completion=row.estimated_completion,
    )


def _failed_dispatch(row: repo.TaskRow, result: DeliveryResult) -> TaskFailed:
    return TaskFailed(
        event_id=derived_event_id(row.correlation_id, "terminal"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        cause="dispatch_rejected" if result.outcome == "rejected" else "dispatch_unreachable",
        reason=result.reason,
    )


def _progressed(row: repo.TaskRow, callback: CallbackReceived) -> TaskProgressed:
    assert row.deadline_at is not None
    return TaskProgressed(
        event_id=derived_event_id(row.correlation_id, "progress", callback.event_id),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        progress=callback.progress,
        message=callback.message,
    )


def _finished_by_callback(
    row: repo.TaskRow, callback: CallbackReceived
) -> TaskCompleted | TaskFailed:
    event_id = derived_event_id(row.correlation_id, "terminal")
    if row.status is TaskStatus.COMPLETED:
        return TaskCompleted(
            event_id=event_id,
            correlation_id=row.correlation_id,
            task=_ref(row),
            result_url=callback.result_url,
            metadata=callback.metadata,
        )
    return TaskFailed(
        event_id=event_id,
        correlation_id=row.correlation_id,
        task=_ref(row),
        cause="callback_error",
        reason=callback.error or "The external service reported an error.",
    )


def _expired(row: repo.TaskRow) -> TaskExpired:
    assert row.deadline_at is not None
    return TaskExpired(
        event_id=derived_event_id(row.correlation_id, "terminal"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        timeout_seconds=row.timeout_seconds,
    )
