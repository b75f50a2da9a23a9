"""The real service on the real broker: retries survive a restart, and no secret leaks."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from webhook_tasks_contracts import (
    TaskDispatched,
    Topics,
    lifecycle_event_adapter,
)
from webhook_tasks_dispatcher.main import serve
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics

from .conftest import (
    GENEROUS_WAIT,
    LocalServer,
    publish_task,
    settings_for,
    wait_until,
    webhook_task,
)

pytestmark = pytest.mark.integration

SECRET = "Bearer restart-test-" + uuid.uuid4().hex
TASKS = 5


async def test_pending_retries_survive_a_restart_and_no_secret_leaks(
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
    server: LocalServer,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = True

    async def flaky(request: web.Request) -> web.StreamResponse:
        if failing:
            return web.Response(status=503, text="down for maintenance")
        return web.json_response({"status": "accepted"})

    server.routes["/run"] = flaky
    await ensure_topics(infrastructure.kafka_bootstrap_servers, unique_topics.all())
    settings = settings_for(infrastructure, unique_schema, unique_topics)
    requests = [
        webhook_task(f"{server.url}/run", prefix=f"restart-{index}", webhookAuth=SECRET)
        for index in range(TASKS)
    ]

    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    await producer.start()
    try:
        for request in requests:
            await publish_task(producer, unique_topics, request)
    finally:
        await producer.stop()
    # From here on, every log line is the dispatcher's (the upstream producer above logs
    # what it sends at DEBUG, secret included: that is the upstream's business).
    caplog.clear()
    stop = asyncio.Event()
    first = asyncio.create_task(serve(settings, stop))
    await wait_until(
        pool,
        "SELECT count(DISTINCT correlation_id) FROM dispatch_attempts"
        " WHERE correlation_id IN (SELECT correlation_id FROM dispatch_attempts"
        " GROUP BY 1 HAVING count(*) >= 2)",
        lambda count: count == TASKS,
        first,
    )
    stop.set()
    await asyncio.wait_for(first, GENEROUS_WAIT)

    assert await pool.fetchval("SELECT count(*) FROM dispatch_requests") == TASKS
    assert await pool.fetchval("SELECT count(*) FROM tasks WHERE status = 'pending'") == TASKS
    attempts_before = await pool.fetchval("SELECT count(*) FROM dispatch_attempts")

    failing = False
    stop = asyncio.Event()
    second = asyncio.create_task(serve(settings, stop))
    try:
        await wait_until(
            pool,
            "SELECT count(*) FROM tasks WHERE status = 'initiated'",
            lambda count: count == TASKS,
            second,
        )
    finally:
        stop.set()
        await asyncio.wait_for(second, GENEROUS_WAIT)

    assert await pool.fetchval("SELECT count(*) FROM dispatch_requests") == 0
    assert await pool.fetchval("SELECT count(*) FROM dispatch_attempts") > attempts_before
    sent_auth = {headers.get("Authorization") for _, headers, _ in server.received}
    assert sent_auth == {SECRET}, "webhookAuth went out as the Authorization header"
    ids: dict[str, set[str]] = {}
    for _, headers, body in server.received:
        ids.setdefault(headers["webhook-id"], set()).add(body.decode())
    assert len(ids) == TASKS, "one webhook-id per task, the same on every retry"
    assert all(len(bodies) == 1 for bodies in ids.values())

    events = await read_all(infrastructure, unique_topics.task_lifecycle)
    dispatched = [lifecycle_event_adapter.validate_json(value) for value in events]
    assert sorted(
        event.task.task_id for event in dispatched if isinstance(event, TaskDispatched)
    ) == sorted(request.task_id for request in requests)
    assert not [value for value in events if SECRET.encode() in value]
    assert caplog.records, "logs were captured"
    leaked = [
        record
        for record in caplog.records
        if SECRET in record.getMessage() or SECRET in repr(record.__dict__)
    ]
    assert leaked == []
    rows = await pool.fetch("SELECT * FROM tasks")
    rows += await pool.fetch("SELECT * FROM dispatch_attempts")
    rows += await pool.fetch("SELECT * FROM task_history")
    assert SECRET not in repr([dict(row) for row in rows])


async def read_all(infrastructure: Infrastructure, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(GENEROUS_WAIT):
            while len(values) < TASKS:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    values += [record.value for record in records if record.value is not None]
        # Anything published after the expected events would show up now.
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            values += [record.value for record in records if record.value is not None]
    finally:
        await consumer.stop()
    return values
