"""The task-lifecycle consumer: one comment per outcome, users told, announcements queued."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

import asyncpg
from webhook_tasks_contracts import (
    AnyLifecycleEvent,
    ChatCommentPosted,
    TaskDispatched,
    TaskProgressed,
    TaskRef,
    TaskResultArrivedLate,
    Topics,
    UserNotified,
    derived_event_id,
    utc_now,
)
from webhook_tasks_runtime.outbox import OutboxRelay, add_events_to_outbox
from webhook_tasks_runtime.tracing import current_traceparent

from . import repository
from .comment_templates import CommentTemplates
from .comments import render_comment, render_progress_ended
from .repository import Comment, Notification

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

LifecycleEventType = AnyLifecycleEvent


class SinkWaker(Protocol):
    """The HTTP sink, told when the handler has queued deliveries for it."""

    def wake(self) -> None: ...


class LifecycleHandler:
    """Turn task lifecycle events into chat comments and user notifications, idempotently."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        templates: CommentTemplates,
        topics: Topics,
        sink: SinkWaker | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._relay = relay
        self._templates = templates
        self._topics = topics
        self._sink = sink
        self._clock = clock

    async def handle(self, event: LifecycleEventType) -> None:
        """Write the comment `event` calls for, unless it is already written."""
        if isinstance(event, TaskDispatched):
            return
        rendered = render_comment(event, self._templates)
        notifications: list[Notification] = []
        ended: Comment | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            if isinstance(event, TaskProgressed):
                comment = await repository.upsert_progress_comment(conn, event, rendered.text)
            elif isinstance(event, TaskResultArrivedLate):
                comment = await repository.insert_late_result_comment(conn, event, rendered.text)
                if comment is not None:
                    notifications = await repository.insert_notifications(
                        conn, comment, users_to_tell(event.task)
                    )
            else:
                comment = await repository.insert_terminal_comment(
                    conn, event, rendered.kind, rendered.text
                )
                if comment is not None:
                    notifications = await repository.insert_notifications(
                        conn, comment, users_to_tell(event.task)
                    )
                    # "In progress 90%" above the outcome would contradict it: it says so instead.
                    ended = await repository.end_progress_comment(
                        conn, event, render_progress_ended(event, self._templates)
                    )
            if comment is None:
                logger.info("nothing new to write", extra={"kind": rendered.kind})
                return
            announcements = self._announcements(event.task, comment, notifications, event.event_id)
            if ended is not None:
                announcements += self._announcements(event.task, ended, [], event.event_id)
            # They continue the trace the lifecycle event came in (the task's dispatch), if any.
            traceparent = current_traceparent()
            await add_events_to_outbox(
                conn,
                self._topics.notifications,
                announcements,
                traceparents=[traceparent] * len(announcements),
            )
            if self._sink is not None:
                await repository.queue_sink_deliveries(
                    conn, [_sink_delivery(item) for item in announcements], self._clock()
                )
        self._relay.wake()
        if self._sink is not None:
            self._sink.wake()
        logger.info(
            "comment written",
            extra={"kind": comment.kind, "comment_id": comment.id, "notified": len(notifications)},
        )

    def _announcements(
        self,
        task: TaskRef,
        comment: Comment,
        notifications: Sequence[Notification],
        source_event_id: UUID,
    ) -> list[ChatCommentPosted | UserNotified]:
        key = comment.correlation_id
        # A terminal comment is announced once per task; a progress comment once per update;
        # a late result once per task, apart from the terminal comment.
        version: object = {"progress": source_event_id, "late_result": "late_result"}.get(
            comment.kind, "terminal"
        )
        posted = ChatCommentPosted(
            event_id=derived_event_id("chat_comment.posted", key, version),
            correlation_id=key,
            task=task,
            comment_id=comment.id,
            kind=comment.kind,
            text=comment.text,
            edited=comment.updated_at > comment.created_at,
            revision=comment.revision,
        )
        # One user's notification names no one else: the followers list is the task's
        # business, and repeated in each of a thousand followers' events it grew quadratically.
        addressed = task.model_copy(update={"followers": ()})
        told = [
            UserNotified(
                event_id=derived_event_id("user.notified", key, notification.user_id)
                if notification.kind != "late_result"
                else derived_event_id("user.notified", key, notification.user_id, "late_result"),
                correlation_id=key,
                task=addressed,
                user_id=notification.user_id,
                kind=notification.kind,
                text=comment.text,
            )
            for notification in notifications
        ]
        return [posted, *told]


def _sink_delivery(item: ChatCommentPosted | UserNotified) -> repository.QueuedDelivery:
    """Return the sink's delivery of `item`; a comment's text keeps its comment and revision."""
    payload = item.model_dump_json().encode()
    if isinstance(item, ChatCommentPosted):
        return repository.QueuedDelivery(
            item.event_id, item.correlation_id, payload, item.comment_id, item.revision
        )
    return repository.QueuedDelivery(item.event_id, item.correlation_id, payload)


def users_to_tell(task: TaskRef) -> list[str]:
    """Return the task's owner then its followers, each once."""
    return list(dict.fromkeys((task.user_id, *task.followers)))
