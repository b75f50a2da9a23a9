"""The real service on the real broker: a dispatched task's deadline is announced on time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from webhook_tasks_contracts import (
    DeadlineReached,
    TaskCompleted,
    TaskDispatched,
    TaskRef,
    Topics,
    utc_now,
)
from webhook_tasks_expirer.main import serve
from webhook_tasks_expirer.settings import ExpirerSettings
from webhook_tasks_runtime.infra import Infrastructure

pytestmark = pytest.mark.integration

# The first consumer-group join on the embedded broker takes seconds; waits end early.
GENEROUS_WAIT = 60.0


def dispatched(correlation_id: str, *, in_seconds: float) -> TaskDispatched:
    return TaskDispatched(
        correlation_id=correlation_id,
        task=TaskRef(task_id=f"task-{correlation_id}", user_id="user-1", project_id="project-1"),
        deadline_at=utc_now() + timedelta(seconds=in_seconds),
        timeout_seconds=max(1, round(in_seconds)),
        webhook_host="example.com",
    )


@pytest.fixture
async def producer(infrastructure: Infrastructure) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=infrastructure.supports_idempotent_producer,
    )
    await producer.start()
    yield producer
    await producer.stop()


class DeadlineReader:
    """Read the deadline-reached topic, remembering every announcement seen."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.seen: dict[str, tuple[DeadlineReached, timedelta]] = {}

    async def wait_for(
        self, correlation_id: str, service: asyncio.Task[None]
    ) -> tuple[DeadlineReached, timedelta]:
        """Return the announcement for `correlation_id` and how long after its deadline
        it was received."""
        async with asyncio.timeout(GENEROUS_WAIT):
            while correlation_id not in self.seen:
                assert not service.done(), "the expirer stopped"
                batches = await self._consumer.getmany(timeout_ms=100)
                received_at = utc_now()
                for records in batches.values():
                    for record in records:
                        event = DeadlineReached.model_validate_json(record.value)
                        self.seen[event.correlation_id] = (event, received_at - event.deadline_at)
        return self.seen[correlation_id]


@pytest.fixture
async def deadlines_reached(
    infrastructure: Infrastructure, unique_topics: Topics
) -> AsyncIterator[DeadlineReader]:
    consumer = AIOKafkaConsumer(
        unique_topics.deadline_reached,
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        group_id=f"{unique_topics.prefix}.test-reader",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    yield DeadlineReader(consumer)
    await consumer.stop()


@pytest.fixture
async def running_expirer(
    infrastructure: Infrastructure, unique_schema: str, unique_topics: Topics
) -> AsyncIterator[asyncio.Task[None]]:
    settings = ExpirerSettings(
        environment="test",
        database_url=infrastructure.database_url,
        database_schema=unique_schema,
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
        topic_prefix=unique_topics.prefix,
    )
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    yield service
    stop.set()
    await asyncio.wait_for(service, timeout=30)


async def publish(
    producer: AIOKafkaProducer, topics: Topics, event: TaskDispatched | TaskCompleted
) -> None:
    await producer.send_and_wait(
        topics.task_lifecycle, event.model_dump_json().encode(), key=event.correlation_id.encode()
    )


async def warm_up(
    service: asyncio.Task[None],
    producer: AIOKafkaProducer,
    reader: DeadlineReader,
    topics: Topics,
) -> None:
    """Wait until the expirer and the reader have both joined their consumer groups."""
    # An already-passed deadline comes back as soon as both sides consume; after that,
    # timings measure the expirer, not the first group join.
    await publish(producer, topics, dispatched("warm-up", in_seconds=-1))
    await reader.wait_for("warm-up", service)


async def test_a_dispatched_task_is_announced_within_a_second_of_its_deadline(
    running_expirer: asyncio.Task[None],
    producer: AIOKafkaProducer,
    deadlines_reached: DeadlineReader,
    unique_topics: Topics,
) -> None:
    await warm_up(running_expirer, producer, deadlines_reached, unique_topics)

    task = dispatched("on-time", in_seconds=1.5)
    await publish(producer, unique_topics, task)
    event, received_late_by = await deadlines_reached.wait_for("on-time", running_expirer)

    emitted_late_by = event.occurred_at - event.deadline_at
    assert event.deadline_at == task.deadline_at
    assert timedelta(0) <= emitted_late_by < timedelta(seconds=1), emitted_late_by
    assert received_late_by < timedelta(seconds=1), received_late_by


async def test_a_task_that_completes_in_time_is_never_announced(
    running_expirer: asyncio.Task[None],
    producer: AIOKafkaProducer,
    deadlines_reached: DeadlineReader,
    unique_topics: Topics,
) -> None:
    await warm_up(running_expirer, producer, deadlines_reached, unique_topics)
    finished = dispatched("finished", in_seconds=1)
    await publish(producer, unique_topics, finished)
    await publish(
        producer,
        unique_topics,
        TaskCompleted(correlation_id="finished", task=finished.task, result_url=None),
    )

    # A later deadline: once it is announced, the finished task's would have been too.
    await publish(producer, unique_topics, dispatched("control", in_seconds=2))
    await deadlines_reached.wait_for("control", running_expirer)

    assert "finished" not in deadlines_reached.seen
