"""Consumers: bad input goes to the dead-letter topic with the reason; failures are retried."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream.kafka import KafkaBroker, TestKafkaBroker
from opentelemetry import trace
from pydantic import BaseModel, TypeAdapter, ValidationError
from webhook_tasks_contracts import DeadLetter, Topics
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import (
    ConsumerSpec,
    KafkaPublisher,
    OutgoingMessage,
    create_broker,
    register_consumer,
)
from webhook_tasks_runtime.settings import RuntimeSettings


class Ping(BaseModel):
    number: int


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        self.messages.extend(messages)


@contextlib.asynccontextmanager
async def subscribed(
    infrastructure: Infrastructure,
    topics: Topics,
    name: str,
    topic: str,
    handle: Callable[[Ping], Awaitable[None]],
    **options: float,
) -> AsyncIterator[tuple[KafkaPublisher, KafkaBroker]]:
    """Yield a started publisher and a broker (not yet started) with `handle` subscribed."""
    publisher = KafkaPublisher.create(
        infrastructure.kafka_bootstrap_servers, enable_idempotence=False, client_id="test"
    )
    await publisher.start()
    broker = create_broker(infrastructure.kafka_bootstrap_servers, client_id="test")
    register_consumer(
        broker,
        ConsumerSpec(name, topic, f"{topics.prefix}.{name}", TypeAdapter(Ping), handle),
        dead_letters=publisher,
        topics=topics,
        **options,  # type: ignore[arg-type]
    )
    try:
        yield publisher, broker
    finally:
        await broker.stop()
        await publisher.stop()


async def test_invalid_messages_are_dead_lettered_and_valid_ones_handled() -> None:
    topics = Topics(f"unit-{uuid.uuid4().hex[:8]}")
    topic = topics.task_requested
    handled: list[Ping] = []
    dead = RecordingPublisher()

    async def handle(event: Ping) -> None:
        handled.append(event)

    broker = KafkaBroker()
    register_consumer(
        broker,
        ConsumerSpec("test", topic, "group", TypeAdapter(Ping), handle),
        dead_letters=dead,
        topics=topics,
    )
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(b'{"number": 1}', topic)
        await test_broker.publish(b"not json at all", topic)
        await test_broker.publish(b'{"number": "three"}', topic)

    assert handled == [Ping(number=1)]
    assert [message.topic for message in dead.messages] == [topics.dead_letter(topic)] * 2
    letters = [DeadLetter.model_validate_json(message.value) for message in dead.messages]
    assert base64.b64decode(letters[0].value_base64) == b"not json at all"
    assert "json" in letters[0].reason.lower()
    assert "number" in letters[1].reason
    assert all(letter.consumer == "test" for letter in letters)


@pytest.mark.integration
async def test_a_failing_handler_gets_the_event_again_and_offsets_follow_effects(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(event: Ping) -> None:
        attempts.append(event.number)
        if len(attempts) == 1:
            raise ConnectionError("database briefly unavailable")
        done.set()

    async with subscribed(
        infrastructure, unique_topics, "flaky", topic, flaky, retry_delay=0.1
    ) as (publisher, broker):
        await publisher.publish(OutgoingMessage(topic, "k", json.dumps({"number": 7}).encode()))
        await broker.start()
        await asyncio.wait_for(done.wait(), 60)

    assert attempts == [7, 7]
    # The group's committed offset is past the event: a restarted consumer does not see it.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        group_id=f"{unique_topics.prefix}.flaky",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        from aiokafka import TopicPartition

        committed = [
            await consumer.committed(TopicPartition(topic, partition)) for partition in partitions
        ]
    finally:
        await consumer.stop()
    assert sum(offset or 0 for offset in committed) == 1


@pytest.mark.integration
async def test_dead_letters_reach_the_real_dead_letter_topic(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.callback_received

    async def never(event: Ping) -> None:
        raise AssertionError("an invalid event must not reach the handler")

    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    reader = AIOKafkaConsumer(
        unique_topics.dead_letter(topic),
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    async with subscribed(infrastructure, unique_topics, "dlq", topic, never) as (_, broker):
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"number": []}', key=b"key-1")
            await broker.start()
            await reader.start()
            record = await asyncio.wait_for(reader.getone(), 60)
        finally:
            await reader.stop()
            await producer.stop()

    letter = DeadLetter.model_validate_json(record.value)
    assert record.key == b"key-1"
    assert letter.source_topic == topic
    assert base64.b64decode(letter.value_base64) == b'{"number": []}'
    assert "number" in letter.reason


@pytest.mark.integration
async def test_a_handler_runs_in_the_trace_its_producer_sent_in_the_message_headers(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    upstream_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    seen: dict[int, str | None] = {}
    done = asyncio.Event()

    async def handle(event: Ping) -> None:
        span_context = trace.get_current_span().get_span_context()
        seen[event.number] = (
            format(span_context.trace_id, "032x") if span_context.is_valid else None
        )
        if len(seen) == 2:
            done.set()

    traceparent = f"00-{upstream_trace}-00f067aa0ba902b7-01"
    async with subscribed(infrastructure, unique_topics, "traced", topic, handle) as (
        publisher,
        broker,
    ):
        # Our publisher sends a message's trace as its header, as the outbox relay does.
        await publisher.publish_many(
            [
                OutgoingMessage(topic, "a", b'{"number": 1}', traceparent=traceparent),
                OutgoingMessage(topic, "b", b'{"number": 2}'),
            ]
        )
        await broker.start()
        await asyncio.wait_for(done.wait(), 60)

    assert seen == {1: upstream_trace, 2: None}


def test_an_idle_consumer_looks_again_after_the_poll_interval() -> None:
    # FastStream's batch consumer sleeps its batch timeout after a look that found nothing;
    # that sleep is what an event reaching an idle service may wait.
    topics = Topics(f"unit-{uuid.uuid4().hex[:8]}")

    async def handle(event: Ping) -> None:
        return None

    broker = KafkaBroker()
    spec = ConsumerSpec("test", topics.task_requested, "group", TypeAdapter(Ping), handle)
    register_consumer(
        broker, spec, dead_letters=RecordingPublisher(), topics=topics, poll_interval_ms=35
    )
    [subscriber] = broker.subscribers
    assert getattr(subscriber, "batch_timeout_ms", None) == 35


def test_the_poll_interval_defaults_to_20_ms_and_is_configurable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    monkeypatch.delenv("KAFKA_POLL_INTERVAL_MS", raising=False)
    assert RuntimeSettings(_env_file=None).kafka_poll_interval_ms == 20  # type: ignore[call-arg]
    monkeypatch.setenv("KAFKA_POLL_INTERVAL_MS", "50")
    assert RuntimeSettings(_env_file=None).kafka_poll_interval_ms == 50  # type: ignore[call-arg]
    monkeypatch.setenv("KAFKA_POLL_INTERVAL_MS", "0")
    with pytest.raises(ValidationError, match="kafka_poll_interval_ms"):
        RuntimeSettings(_env_file=None)  # type: ignore[call-arg]
