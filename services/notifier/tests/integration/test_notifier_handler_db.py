from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from opentelemetry import context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from webhook_tasks_contracts import (
    ChatCommentPosted,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
    TaskResultArrivedLate,
    Topics,
    UserNotified,
    notification_event_adapter,
)
from webhook_tasks_notifier.comment_templates import load_templates
from webhook_tasks_notifier.handlers import LifecycleHandler
from webhook_tasks_notifier.repository import comments_for, notifications_for
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import KafkaPublisher
from webhook_tasks_runtime.outbox import OutboxRelay

pytestmark = pytest.mark.integration

TASK = TaskRef(
    task_id="task-1",
    user_id="owner",
    project_id="project-1",
    followers=("ann", "owner", "bob"),
)
DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pool(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=4)
    await migrate(
        pool, unique_schema, runtime_migrations() + load_migrations("webhook_tasks_notifier")
    )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def handler(
    pool: asyncpg.Pool,
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
) -> LifecycleHandler:
    # The relay is only woken here, never run: the test reads the outbox rows it would send.
    publisher = KafkaPublisher.create(
        infrastructure.kafka_bootstrap_servers, enable_idempotence=False, client_id="test"
    )
    relay = OutboxRelay(pool, publisher, schema=unique_schema)
    return LifecycleHandler(
        pool=pool, relay=relay, templates=load_templates(), topics=unique_topics
    )


async def outbox(pool: asyncpg.Pool) -> list[tuple[str, str, ChatCommentPosted | UserNotified]]:
    rows = await pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
    return [
        (row["topic"], row["key"], notification_event_adapter.validate_json(row["payload"]))
        for row in rows
    ]


def completed(correlation_id: str = "corr-1") -> TaskCompleted:
    return TaskCompleted(
        correlation_id=correlation_id,
        task=TASK,
        result_url="https://cdn.example.com/video.mp4",
        metadata={"title": "Video", "duration": "2m 30s"},
    )


def progressed(progress: float, at: datetime) -> TaskProgressed:
    return TaskProgressed(
        correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, progress=progress, occurred_at=at
    )


async def test_terminal_event_writes_one_comment_notifications_and_outbox_events(
    handler: LifecycleHandler, pool: asyncpg.Pool, unique_topics: Topics
) -> None:
    await handler.handle(completed())

    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-1"])
        notifications = await notifications_for(conn, ["corr-1"])
    assert [(c.kind, c.task_id) for c in comments] == [("result", "task-1")]
    assert comments[0].text.startswith("**Video**")
    assert [n.user_id for n in notifications] == ["owner", "ann", "bob"]
    assert {n.comment_id for n in notifications} == {comments[0].id}

    queued = await outbox(pool)
    assert {(topic, key) for topic, key, _ in queued} == {(unique_topics.notifications, "corr-1")}
    events = [event for _, _, event in queued]
    assert isinstance(events[0], ChatCommentPosted)
    assert (events[0].comment_id, events[0].kind) == (comments[0].id, "result")
    assert events[0].text == comments[0].text
    told = [event for event in events[1:] if isinstance(event, UserNotified)]
    assert [event.user_id for event in told] == ["owner", "ann", "bob"]
    # The comment names the task's followers; a user's notification names no one else.
    assert events[0].task.followers == ("ann", "owner", "bob")
    assert [event.task for event in told] == [TASK.model_copy(update={"followers": ()})] * 3
    assert len({event.event_id for event in events}) == len(events) == 4


async def test_redelivered_and_conflicting_terminal_events_change_nothing(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    first = completed()
    await handler.handle(first)
    before = await pool.fetch("SELECT * FROM comments ORDER BY id")
    queued_before = await outbox(pool)

    await handler.handle(first)
    await handler.handle(completed())  # the same outcome under a new event id
    await handler.handle(
        TaskFailed(correlation_id="corr-1", task=TASK, cause="callback_error", reason="late")
    )
    await handler.handle(
        TaskExpired(correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, timeout_seconds=300)
    )

    assert await pool.fetch("SELECT * FROM comments ORDER BY id") == before
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 3
    assert await outbox(pool) == queued_before


async def test_outcomes_of_different_tasks_each_get_their_comment(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(completed("corr-1"))
    await handler.handle(
        TaskExpired(correlation_id="corr-2", task=TASK, deadline_at=DEADLINE, timeout_seconds=90)
    )

    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-1", "corr-2"])
    assert [(c.correlation_id, c.kind) for c in comments] == [
        ("corr-1", "result"),
        ("corr-2", "expired"),
    ]
    assert "1 minute 30 seconds" in comments[1].text


async def test_progress_keeps_one_comment_up_to_date_and_ignores_replays(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    early, late = progressed(10, start), progressed(60, start + timedelta(seconds=5))

    await handler.handle(early)
    await handler.handle(late)
    await handler.handle(early)  # a replay of an older heartbeat must not move it back
    await handler.handle(late)

    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-1"])
    assert [(c.kind, c.text) for c in comments] == [("progress", "**In progress** 60%")]
    assert comments[0].updated_at > comments[0].created_at
    queued = [event for _, _, event in await outbox(pool)]
    assert [(type(e).__name__, e.kind) for e in queued] == [("ChatCommentPosted", "progress")] * 2
    assert len({e.event_id for e in queued}) == 2
    # One comment: the second announcement replaces the first's text in the chat; the replays
    # wrote nothing, so no revision was spent on them.
    posted = [e for e in queued if isinstance(e, ChatCommentPosted)]
    assert [(e.comment_id, e.edited, e.revision) for e in posted] == [
        (comments[0].id, False, 1),
        (comments[0].id, True, 2),
    ]
    assert comments[0].revision == 2
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 0


async def test_a_heartbeat_repeating_the_shown_text_is_not_announced_again(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for seconds, percent in [(0, 50), (10, 50), (20, 50), (30, 60), (40, 60)]:
        await handler.handle(progressed(percent, start + timedelta(seconds=seconds)))

    posted = [e for _, _, e in await outbox(pool) if isinstance(e, ChatCommentPosted)]
    assert [(e.text, e.revision) for e in posted] == [
        ("**In progress** 50%", 1),
        ("**In progress** 60%", 2),
    ]
    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-1"])
    assert [(c.text, c.revision) for c in comments] == [("**In progress** 60%", 2)]


async def test_the_outcome_gives_the_progress_comment_its_last_text_once(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(progressed(90, datetime(2030, 1, 1, tzinfo=UTC)))
    outcome = TaskExpired(
        correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, timeout_seconds=300
    )

    await handler.handle(outcome)
    await handler.handle(outcome)  # redelivered
    await handler.handle(completed())  # a later, conflicting outcome

    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-1"])
    assert [(c.kind, c.text) for c in comments] == [
        (
            "progress",
            "**No longer in progress**: the task expired. The outcome is in the comment below.",
        ),
        ("expired", comments[1].text),
    ]
    posted = [e for _, _, e in await outbox(pool) if isinstance(e, ChatCommentPosted)]
    # The progress comment, the outcome, then the progress comment's last text in its place.
    assert [(e.comment_id, e.kind, e.edited, e.revision) for e in posted] == [
        (comments[0].id, "progress", False, 1),
        (comments[1].id, "expired", False, 1),
        (comments[0].id, "progress", True, 2),
    ]
    assert posted[2].text == comments[0].text
    assert len({e.event_id for e in posted}) == 3
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 3


async def test_an_outcome_without_progress_edits_no_other_comment(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(
        TaskFailed(correlation_id="corr-1", task=TASK, cause="callback_error", reason="no GPU")
    )

    posted = [e for _, _, e in await outbox(pool) if isinstance(e, ChatCommentPosted)]
    assert [(e.kind, e.edited) for e in posted] == [("error", False)]


async def test_progress_after_the_outcome_writes_nothing(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(completed())
    queued_before = await outbox(pool)

    await handler.handle(progressed(99, datetime(2031, 1, 1, tzinfo=UTC)))

    async with pool.acquire() as conn:
        assert [c.kind for c in await comments_for(conn, ["corr-1"])] == ["result"]
    assert await outbox(pool) == queued_before


async def test_dispatched_event_writes_nothing(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(
        TaskDispatched(
            correlation_id="corr-1",
            task=TASK,
            deadline_at=DEADLINE,
            timeout_seconds=300,
            webhook_host="svc.example.com",
        )
    )

    assert await pool.fetchval("SELECT count(*) FROM comments") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_late_result_gets_its_own_comment_marked_late_once(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    expired = TaskExpired(
        correlation_id="corr-late", task=TASK, deadline_at=DEADLINE, timeout_seconds=300
    )
    late = TaskResultArrivedLate(
        correlation_id="corr-late",
        task=TASK,
        result_url="https://cdn.example.com/late.mp4",
        metadata={"title": "Late video"},
    )

    await handler.handle(expired)
    await handler.handle(late)
    await handler.handle(late)  # redelivered
    await handler.handle(expired)  # replayed

    async with pool.acquire() as conn:
        comments = await comments_for(conn, ["corr-late"])
        notifications = await notifications_for(conn, ["corr-late"])
    assert [comment.kind for comment in comments] == ["expired", "late_result"]
    assert "arrived late" in comments[1].text
    assert "https://cdn.example.com/late.mp4" in comments[1].text
    assert sorted((n.kind, n.user_id) for n in notifications) == sorted(
        [(kind, user) for kind in ("expired", "late_result") for user in ("owner", "ann", "bob")]
    )
    events = [event for _, _, event in await outbox(pool)]
    assert len(events) == 8
    assert len({event.event_id for event in events}) == 8


async def test_announcements_continue_the_trace_their_lifecycle_event_came_in(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # As the consumer runs a handler: in the trace its message's header names.
    token = context.attach(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))
    try:
        await handler.handle(completed("corr-traced"))
    finally:
        context.detach(token)
    await handler.handle(completed("corr-untraced"))

    rows = await pool.fetch("SELECT key, traceparent FROM outbox ORDER BY id")
    traces = {(row["key"], row["traceparent"]) for row in rows}
    # Every announcement of a task (its comment, each user told) names the same trace.
    assert traces == {("corr-traced", traceparent), ("corr-untraced", None)}


async def test_an_announcement_written_before_revisions_existed_still_parses(
    handler: LifecycleHandler, pool: asyncpg.Pool
) -> None:
    await handler.handle(progressed(10, datetime(2030, 1, 1, tzinfo=UTC)))
    payload = await pool.fetchval("SELECT payload FROM outbox ORDER BY id LIMIT 1")
    older = json.loads(payload)
    del older["revision"]

    event = notification_event_adapter.validate_python(older)

    assert isinstance(event, ChatCommentPosted)
    assert event.revision is None
