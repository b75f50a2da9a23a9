"""The outbox: events leave only after commit, in order, and survive a failed publish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from webhook_tasks_contracts import Topics
from webhook_tasks_runtime.db import create_pool, migrate, runtime_migrations
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import KafkaPublisher, OutgoingMessage, ensure_topics
from webhook_tasks_runtime.outbox import OutboxRelay, add_to_outbox

pytestmark = pytest.mark.integration


class Publisher:
    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.fail_next = False

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker unavailable")
        self.sent.extend(messages)


@pytest.fixture
async def pool(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema)
    await migrate(pool, unique_schema, runtime_migrations())
    try:
        yield pool
    finally:
        await pool.execute(f'DROP SCHEMA "{unique_schema}" CASCADE')
        await pool.close()


def messages(*values: str) -> list[OutgoingMessage]:
    return [OutgoingMessage("topic", "key", value.encode()) for value in values]


async def test_only_committed_rows_are_published_in_order(
    pool: asyncpg.Pool, unique_schema: str
) -> None:
    publisher = Publisher()
    relay = OutboxRelay(pool, publisher, schema=unique_schema, batch_size=2)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await add_to_outbox(conn, messages("1", "2", "3"))
        transaction = conn.transaction()
        await transaction.start()
        await add_to_outbox(conn, messages("rolled back"))
        await transaction.rollback()  # the state change failed

    assert await relay.flush() == 3
    assert [message.value for message in publisher.sent] == [b"1", b"2", b"3"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_failed_publish_keeps_the_rows_for_the_next_flush(
    pool: asyncpg.Pool, unique_schema: str
) -> None:
    publisher = Publisher()
    relay = OutboxRelay(pool, publisher, schema=unique_schema)
    async with pool.acquire() as conn:
        await add_to_outbox(conn, messages("a", "b"))
    publisher.fail_next = True

    with pytest.raises(ConnectionError):
        await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2

    await relay.flush()
    assert [message.value for message in publisher.sent] == [b"a", b"b"]


async def test_the_oldest_waiting_event_shows_how_long_kafka_has_been_refusing(
    pool: asyncpg.Pool, unique_schema: str
) -> None:
    publisher = Publisher()
    relay = OutboxRelay(pool, publisher, schema=unique_schema, batch_size=2)
    async with pool.acquire() as conn:
        await add_to_outbox(conn, messages("a", "b", "c"))
    # As if written a minute ago: the gauge reads the database's clock, not a wall clock here.
    await pool.execute("UPDATE outbox SET created_at = created_at - interval '60 seconds'")

    publisher.fail_next = True
    with pytest.raises(ConnectionError):
        await relay.flush()
    assert 60 <= oldest_waiting(unique_schema) < 120

    assert await relay.flush() == 3
    assert oldest_waiting(unique_schema) == 0


def oldest_waiting(schema: str) -> float:
    """Return the relay's oldest-waiting gauge for `schema` as /metrics shows it."""
    value = REGISTRY.get_sample_value(
        "webhook_tasks_outbox_oldest_waiting_seconds", {"schema": schema}
    )
    assert value is not None, f"no oldest-waiting gauge for {schema}"
    return value


async def test_each_message_keeps_its_topic_key_bytes_and_trace(
    pool: asyncpg.Pool, unique_schema: str
) -> None:
    publisher = Publisher()
    relay = OutboxRelay(pool, publisher, schema=unique_schema)
    queued = [
        OutgoingMessage("lifecycle", "c-1", b'{"n": 1}'),
        OutgoingMessage("notifications", None, b"\x00\xff binary"),
        OutgoingMessage(
            "lifecycle",
            "c-2",
            b"",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, queued)

    await relay.flush()

    assert publisher.sent == queued


async def values_on(bootstrap: str, topic: str, *, count: int) -> list[bytes]:
    """Read `topic` from the start until `count` messages came, then a second more for extras."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values += [record.value for records in batches.values() for record in records]
        batches = await consumer.getmany(timeout_ms=1000)
        values += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return values


async def test_a_row_too_large_for_kafka_is_set_aside_and_the_rows_around_it_go_once(
    infrastructure: Infrastructure,
    pool: asyncpg.Pool,
    unique_schema: str,
    unique_topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    topic = unique_topics.task_lifecycle
    await ensure_topics(bootstrap, [topic])
    publisher = KafkaPublisher.create(
        bootstrap,
        enable_idempotence=infrastructure.supports_idempotent_producer,
        client_id="outbox-test",
        max_request_size=64 * 1024,
    )
    oversized = b"x" * (128 * 1024)
    async with pool.acquire() as conn:
        await add_to_outbox(
            conn,
            [
                OutgoingMessage(topic, "c-1", b"before"),
                OutgoingMessage(topic, "c-2", oversized),
                OutgoingMessage(topic, "c-1", b"after"),
            ],
        )
    await publisher.start()
    try:
        relay = OutboxRelay(pool, publisher, schema=unique_schema)
        with caplog.at_level(logging.ERROR, logger="webhook_tasks_runtime.outbox"):
            assert await relay.flush() == 3
    finally:
        await publisher.stop()

    assert await values_on(bootstrap, topic, count=2) == [b"before", b"after"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    rejected = await pool.fetch("SELECT topic, key, payload, reason FROM outbox_rejected")
    assert [(row["topic"], row["key"], row["payload"]) for row in rejected] == [
        (topic, "c-2", oversized)
    ]
    assert "max_request_size" in rejected[0]["reason"]
    (logged,) = caplog.records
    assert logged.levelno == logging.ERROR
    # Fields the log call gave as `extra`.
    assert (logged.topic, logged.key, logged.size_bytes) == (topic, "c-2", len(oversized))  # type: ignore[attr-defined]


class SlowPublisher(Publisher):
    """Takes `seconds` to have each batch acknowledged, as a Kafka under load may."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        await asyncio.sleep(self.seconds)
        await super().publish_many(messages)


async def test_a_relay_waits_for_another_replicas_publish_longer_than_a_statement_may(
    infrastructure: Infrastructure, pool: asyncpg.Pool, unique_schema: str
) -> None:
    # Replicas take turns publishing under one lock; a turn may outlast the statement timeout.
    quick = await create_pool(infrastructure.database_url, unique_schema, statement_timeout=0.5)
    try:
        slow, waiting = SlowPublisher(1.5), Publisher()
        first = OutboxRelay(quick, slow, schema=unique_schema, lock_wait_step=0.2)
        second = OutboxRelay(quick, waiting, schema=unique_schema, lock_wait_step=0.2)
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, messages("1", "2"))
        holding = asyncio.create_task(first.flush())
        await asyncio.sleep(0.3)  # the first relay holds the lock, publishing

        assert await second.flush() == 0  # waited past 0.5 s, then found the rows gone
        assert await holding == 2
    finally:
        await quick.close()
    assert [m.value for m in slow.sent] == [b"1", b"2"]
