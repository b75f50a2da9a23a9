"""The real service on the real broker: a callback accepted before a deadline wins, however late."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from webhook_tasks_contracts import (
    CallbackReceived,
    DeadlineReached,
    Topics,
    utc_now,
)
from webhook_tasks_dispatcher.main import serve
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics

from .conftest import (
    GENEROUS_WAIT,
    LocalServer,
    accept,
    publish_task,
    settings_for,
    wait_until,
    webhook_task,
)

pytestmark = pytest.mark.integration

PARTITIONS = 3
TIMEOUT_SECONDS = 5
BACKLOG = 1500
"""Callbacks for other tasks, ahead of the task's own on its partition."""


def other_ids_on_the_partition_of(correlation_id: str, count: int) -> list[str]:
    """Return `count` correlation ids that producers put on `correlation_id`'s partition."""
    partitions = list(range(PARTITIONS))

    def partition(key: str) -> int:
        return int(DefaultPartitioner()(key.encode(), partitions, partitions))

    wanted = partition(correlation_id)
    found: list[str] = []
    while len(found) < count:
        key = f"other-{uuid.uuid4().hex}"
        if partition(key) == wanted:
            found.append(key)
    return found


async def test_a_success_queued_behind_a_backlog_beats_the_deadline_that_followed_it(
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
    server: LocalServer,
    pool: asyncpg.Pool,
) -> None:
    server.routes["/run"] = accept
    await ensure_topics(
        infrastructure.kafka_bootstrap_servers, unique_topics.all(), partitions=PARTITIONS
    )
    settings = settings_for(infrastructure, unique_schema, unique_topics, log_level="INFO")
    request = webhook_task(f"{server.url}/run", prefix="race", timeoutSeconds=TIMEOUT_SECONDS)
    producer = AIOKafkaProducer(
        bootstrap_servers=infrastructure.kafka_bootstrap_servers, linger_ms=5
    )
    await producer.start()
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    try:
        # Both of the service's consumers are polling before the race starts.
        await send(
            producer,
            unique_topics.callback_received,
            CallbackReceived(correlation_id="warm-up", status="progress"),
        )
        await send(
            producer,
            unique_topics.deadline_reached,
            DeadlineReached(correlation_id="warm-up", deadline_at=utc_now()),
        )
        await wait_until(
            pool,
            "SELECT count(*) FROM task_history WHERE correlation_id = 'warm-up'",
            lambda count: count == 2,
            service,
        )
        await publish_task(producer, unique_topics, request)
        await wait_until(
            pool, "SELECT count(*) FROM tasks WHERE status = 'initiated'", bool, service
        )
        task = await pool.fetchrow("SELECT correlation_id, deadline_at FROM tasks")
        correlation_id, deadline_at = task["correlation_id"], task["deadline_at"]

        # Just before the deadline: other tasks' callbacks, then this task's success, all on
        # one partition. Then, on time, the deadline on its own topic.
        backlog = [
            CallbackReceived(correlation_id=other, status="success")
            for other in other_ids_on_the_partition_of(correlation_id, BACKLOG)
        ]
        success = CallbackReceived(
            correlation_id=correlation_id,
            status="success",
            result_url="https://results.example.com/r/1",
        )
        await asyncio.sleep(seconds_until(deadline_at) - 1.0)
        sent = [
            producer.send(unique_topics.callback_received, *encoded(event))
            for event in [*backlog, success]
        ]
        await asyncio.gather(*[await delivery for delivery in sent])
        assert seconds_until(deadline_at) > 0, "the set-up was too slow for the deadline"
        await asyncio.sleep(seconds_until(deadline_at))
        await send(
            producer,
            unique_topics.deadline_reached,
            DeadlineReached(correlation_id=correlation_id, deadline_at=deadline_at),
        )

        await wait_until(
            pool,
            "SELECT count(*) FROM task_history"
            " WHERE correlation_id <> 'warm-up' AND correlation_id NOT LIKE 'other-%'",
            lambda count: count == 2,
            service,
        )
        status = await pool.fetchval(
            "SELECT status FROM tasks WHERE correlation_id = $1", correlation_id
        )
        history = await pool.fetch(
            "SELECT kind, outcome FROM task_history WHERE correlation_id = $1 ORDER BY recorded_at",
            correlation_id,
        )
        backlog_seen = await pool.fetchval(
            "SELECT count(*) FROM task_history WHERE correlation_id LIKE 'other-%'"
        )
    finally:
        stop.set()
        await asyncio.wait_for(service, GENEROUS_WAIT)
        await producer.stop()

    assert backlog_seen == BACKLOG
    assert status == "completed", [dict(row) for row in history]
    assert [(row["kind"], row["outcome"]) for row in history] == [
        ("callback:success", "applied"),
        ("deadline", "ignored"),
    ]


def seconds_until(moment: datetime) -> float:
    return (moment - utc_now()).total_seconds()


def encoded(event: CallbackReceived | DeadlineReached) -> tuple[bytes, bytes]:
    """Return the value and the key of `event` as the services produce them."""
    return event.model_dump_json().encode(), event.correlation_id.encode()


async def send(
    producer: AIOKafkaProducer, topic: str, event: CallbackReceived | DeadlineReached
) -> None:
    value, key = encoded(event)
    await producer.send_and_wait(topic, value, key=key)
