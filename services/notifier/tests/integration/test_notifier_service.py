from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from webhook_tasks_contracts import (
    ChatCommentPosted,
    TaskCompleted,
    TaskRef,
    Topics,
    UserNotified,
    notification_event_adapter,
)
from webhook_tasks_notifier.main import serve
from webhook_tasks_notifier.repository import Comment, comments_for
from webhook_tasks_notifier.settings import NotifierSettings
from webhook_tasks_runtime.db import create_pool
from webhook_tasks_runtime.infra import Infrastructure

pytestmark = pytest.mark.integration

T = TypeVar("T")
# A new consumer group takes about 5 s to join on the embedded broker.
WAIT_SECONDS = 60.0


async def eventually(
    probe: Callable[[], Awaitable[T | None]], service: asyncio.Task[None], what: str
) -> T:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if service.done():
            service.result()  # surfaces the service's own error
            raise AssertionError("the notifier stopped by itself")
        found = await probe()
        if found is not None:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def running_notifier(
    infrastructure: Infrastructure, unique_schema: str, unique_topics: Topics
) -> AsyncIterator[asyncio.Task[None]]:
    settings = NotifierSettings(
        database_url=infrastructure.database_url,
        database_schema=unique_schema,
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
        topic_prefix=unique_topics.prefix,
        environment="test",
    )
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=30)


async def publish(bootstrap: str, topic: str, messages: list[tuple[str, TaskCompleted]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, event in messages:
            await producer.send_and_wait(topic, event.model_dump_json().encode(), key=key.encode())
    finally:
        await producer.stop()


async def read_to_end(bootstrap: str, topic: str) -> list[ChatCommentPosted | UserNotified]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[ChatCommentPosted | UserNotified] = []
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        end_offsets = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                events += [notification_event_adapter.validate_json(r.value) for r in records]
            assignment = consumer.assignment()
            if not assignment:
                continue
            if end_offsets is None:
                end_offsets = await consumer.end_offsets(list(assignment))
            positions = {tp: await consumer.position(tp) for tp in end_offsets}
            if all(positions[tp] >= end for tp, end in end_offsets.items()):
                return events
        raise AssertionError(f"timed out reading {topic}")
    finally:
        await consumer.stop()


async def test_a_redelivered_outcome_is_posted_once(
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
    running_notifier: asyncio.Task[None],
) -> None:
    task = TaskRef(task_id="task-1", user_id="owner", project_id="p", followers=("ann",))
    correlation_id, later_id = f"corr-{uuid.uuid4().hex}", f"corr-{uuid.uuid4().hex}"
    outcome = {"correlation_id": correlation_id, "task": task, "result_url": "https://x.example/r"}
    # The last event is another task's, sent on the same key so it lands behind the
    # duplicate in the same partition: once it is handled, so is the duplicate.
    await publish(
        infrastructure.kafka_bootstrap_servers,
        unique_topics.task_lifecycle,
        [
            (correlation_id, TaskCompleted(**outcome)),
            (correlation_id, TaskCompleted(**outcome)),
            (correlation_id, TaskCompleted(correlation_id=later_id, task=task)),
        ],
    )

    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=2)
    try:

        async def all_handled_and_published() -> list[Comment] | None:
            try:
                async with pool.acquire() as conn:
                    comments = await comments_for(conn, [correlation_id, later_id])
                    waiting = await conn.fetchval("SELECT count(*) FROM outbox")
            except asyncpg.UndefinedTableError:  # the service has not migrated yet
                return None
            handled = any(comment.correlation_id == later_id for comment in comments)
            return comments if handled and waiting == 0 else None

        comments = await eventually(
            all_handled_and_published, running_notifier, "both tasks' comments to be published"
        )
    finally:
        await pool.close()

    assert [c.correlation_id for c in comments] == [correlation_id, later_id]
    events = await read_to_end(infrastructure.kafka_bootstrap_servers, unique_topics.notifications)
    of_task = [event for event in events if event.correlation_id == correlation_id]
    posted = [event for event in of_task if isinstance(event, ChatCommentPosted)]
    told = [event.user_id for event in of_task if isinstance(event, UserNotified)]
    assert len(posted) == 1
    assert posted[0].comment_id == comments[0].id
    assert "[Open the result](https://x.example/r)" in posted[0].text
    assert sorted(told) == ["ann", "owner"]
