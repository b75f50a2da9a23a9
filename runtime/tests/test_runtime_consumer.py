"""Consumers: bad input goes to the dead-letter topic with the reason; failures are retried."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker, TestKafkaBroker
from opentelemetry import trace
from prometheus_client import REGISTRY
from pydantic import BaseModel, TypeAdapter, ValidationError
from webhook_tasks_contracts import DeadLetter, TaskRequested, Topics
from webhook_tasks_runtime.catch_up import StoppingError
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import (
    KEPT_VALUE_BYTES,
    ConsumerSpec,
    FailureStreak,
    KafkaPublisher,
    OutgoingMessage,
    create_broker,
    ensure_topics,
    register_consumer,
)
from webhook_tasks_runtime.observability import CONSUMER_FAILURES_IN_A_ROW
from webhook_tasks_runtime.partitioning import default_partitioner
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
        # `options` are register_consumer's own keywords, each of its own type.
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
async def test_a_consumer_asks_for_no_topic_to_be_created(
    infrastructure: Infrastructure, unique_topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastStream would create a topic it reads with one partition on one broker; the topics
    # are the operator's (deploy/kubernetes/topics.yaml) or `webhook-tasks up`'s to create.
    from aiokafka.admin import AIOKafkaAdminClient

    requested: list[object] = []
    create_topics = AIOKafkaAdminClient.create_topics

    async def recording(self: AIOKafkaAdminClient, *args: Any, **kwargs: Any) -> Any:
        requested.append(args)
        return await create_topics(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaAdminClient, "create_topics", recording)

    async def ignore(event: Ping) -> None:
        return None

    topic = unique_topics.deadline_reached
    async with subscribed(infrastructure, unique_topics, "absent", topic, ignore) as (_, broker):
        await broker.start()

    assert requested == []


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
    assert RuntimeSettings(_env_file=None).kafka_poll_interval_ms == 20
    monkeypatch.setenv("KAFKA_POLL_INTERVAL_MS", "50")
    assert RuntimeSettings(_env_file=None).kafka_poll_interval_ms == 50
    monkeypatch.setenv("KAFKA_POLL_INTERVAL_MS", "0")
    with pytest.raises(ValidationError, match="kafka_poll_interval_ms"):
        RuntimeSettings(_env_file=None)


async def records_in(
    infrastructure: Infrastructure, topic: str, *, quiet: float = 1.0, within: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Return what `topic` holds: what comes until `quiet` seconds pass without a record."""
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + within
    await reader.start()
    try:
        while time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=int(quiet * 1000))
            if not batch and records:
                break
            records += [record for partition in batch.values() for record in partition]
    finally:
        await reader.stop()
    return records


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    """Return once `condition` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_secrets_of_a_rejected_task_request_are_masked_in_its_dead_letter() -> None:
    request = {
        "taskId": "task-1",
        "userId": "user-1",
        "projectId": "project-1",
        "prompt": "make a video",
        "followers": "not a list",
        "taskMetadata": {
            "isWebhookTask": True,
            "webhookUrl": "https://service.example/generate",
            "webhookAuth": "Bearer sk-live-1234",
            "webhookParams": {"headers": [{"AUTHORIZATION": "Basic c2VjcmV0"}]},
        },
        "WEBHOOK_AUTH": {"token": "tok-5678"},
    }
    original = json.dumps(request).encode()
    not_json = b'{"webhookAuth": "Bearer cut-short-9999"'
    clean = b'{"taskId": "task-2",  "prompt": 3}'

    (masked_sent, masked), (left_out_sent, left_out), (_, untouched) = await dead_letters_of(
        original, not_json, clean
    )
    for secret in (b"sk-live-1234", b"c2VjcmV0", b"tok-5678"):
        assert secret not in masked_sent
        assert secret not in base64.b64decode(masked.value_base64)
    assert masked.redacted
    document = json.loads(base64.b64decode(masked.value_base64))
    assert document["taskMetadata"]["webhookAuth"] == "**********"
    assert document["taskMetadata"]["webhookParams"]["headers"] == [{"AUTHORIZATION": "**********"}]
    assert document["WEBHOOK_AUTH"] == "**********"
    assert document["followers"] == "not a list"
    # The size describes the message as received; no digest of it, which would let a weak
    # secret be guessed offline.
    assert masked.value_size == len(original)
    assert masked.value_sha256 is None
    assert not masked.truncated
    assert "followers" in masked.reason
    # Not JSON, so no key to mask by: the bytes are left out, their size kept.
    assert b"cut-short-9999" not in left_out_sent
    assert left_out.value_base64 == ""
    assert left_out.redacted
    assert left_out.value_size == len(not_json)
    assert base64.b64decode(untouched.value_base64) == clean
    assert not untouched.redacted


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(
            {
                "taskId": "task-1",
                "taskMetadata": json.dumps({"webhookAuth": "Bearer sk-live-SECRET123"}),
                "prompt": "make a video",
            },
            id="metadata-encoded-twice",
        ),
        pytest.param(
            {"taskId": "task-1", "followers": ["u", "sent with Bearer sk-live-SECRET123"]},
            id="a-bearer-token-in-a-list",
        ),
        pytest.param(json.dumps({"webhookAuth": "sk-live-SECRET123"}), id="a-whole-string"),
    ],
)
async def test_a_secret_inside_a_string_of_a_json_original_is_masked(original: object) -> None:
    encoded = json.dumps(original).encode()

    [(sent, letter)] = await dead_letters_of(encoded)

    assert b"SECRET123" not in sent
    assert b"SECRET123" not in base64.b64decode(letter.value_base64)
    assert b"**********" in base64.b64decode(letter.value_base64)
    assert letter.redacted
    assert letter.value_sha256 is None


async def dead_letters_of(*values: bytes) -> list[tuple[bytes, DeadLetter]]:
    """Reject `values` as task requests in memory; return each dead letter, as sent and parsed."""
    topics = Topics(f"unit-{uuid.uuid4().hex[:8]}")
    dead = RecordingPublisher()

    async def never(event: TaskRequested) -> None:
        raise AssertionError("an invalid event must not reach the handler")

    broker = KafkaBroker()
    register_consumer(
        broker,
        ConsumerSpec("test", topics.task_requested, "group", TypeAdapter(TaskRequested), never),
        dead_letters=dead,
        topics=topics,
    )
    async with TestKafkaBroker(broker) as test_broker:
        for value in values:
            await test_broker.publish(value, topics.task_requested)
    return [
        (message.value, DeadLetter.model_validate_json(message.value)) for message in dead.messages
    ]


TOO_DEEP = b"[" * 100_000 + b"]" * 100_000
TOO_LONG_AN_INTEGER = b"1" * 5000


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(
            b'{"taskId": "t-1", "webhookAuth": "tok-secret", "prompt": "a vid', id="cut-short"
        ),
        pytest.param(b'{"taskMetadata": {"webhook\\u0041uth": "tok-secret"', id="escaped-letter"),
        pytest.param(b'{"\\u0061\\u0055THORIZATION": "tok-secret", "p', id="all-escaped-any-case"),
        pytest.param(b'{"WEBHOOK\\u005fAUTH": "tok-secret", "p', id="escaped-underscore"),
        pytest.param(
            b'{"authorization": "tok-secret", "nested": ' + TOO_DEEP + b"}", id="nested-too-deep"
        ),
        pytest.param(
            b'{"number": ' + TOO_LONG_AN_INTEGER + b', "Authorization": "tok-secret"}',
            id="integer-too-long",
        ),
        pytest.param(b'{"webhookAuth": "tok-secret", "prompt": "caf\xe9"}', id="not-utf-8"),
        pytest.param(b'{"webhook\xffAuth": "tok-secret"}', id="not-utf-8-inside-the-name"),
        pytest.param('{"webhookAuth": "tok-secret"'.encode("utf-16-le"), id="utf-16-cut-short"),
        pytest.param(b"POST /generate\r\nX-Token: Bearer tok-secret\r\n", id="bearer-token"),
        pytest.param(b'{"prompt": "use bearer\\ttok-secret"', id="bearer-escaped-tab"),
        pytest.param(b"C:\\bearer tok-secret", id="bearer-after-a-backslash"),
        pytest.param(b"AUTHORIZATION: Basic tok-secret", id="authorization-header"),
    ],
)
async def test_an_unparsable_original_that_may_hold_a_secret_is_left_out(original: bytes) -> None:
    [(sent, letter)] = await dead_letters_of(original)

    assert b"tok-secret" not in sent
    assert letter.value_base64 == ""
    assert letter.redacted
    assert not letter.truncated
    # Enough to find the original on the source topic, no digest to guess the secret from.
    assert letter.value_size == len(original)
    assert letter.value_sha256 is None
    assert (letter.partition, letter.offset) == (0, 0)


async def test_unparsable_originals_left_out_at_the_same_position_are_each_dead_lettered() -> None:
    first = b'{"webhookAuth": "tok-first"'
    second = b'{"webhookAuth": "tok-second"'

    letters = [letter for _, letter in await dead_letters_of(first, second)]

    # The in-memory broker numbers both 0, and both dead letters are alike but for their size.
    assert [letter.value_size for letter in letters] == [len(first), len(second)]
    assert all(letter.redacted and letter.value_base64 == "" for letter in letters)


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b'{"taskId": "t-1", "prompt": "a vid', id="cut-short"),
        pytest.param(b'{"prompt": "caf\xe9 au lait"}', id="not-utf-8"),
        pytest.param(b'{"prompt": "who is the bearer?", "nested": ' + TOO_DEEP + b"}", id="deep"),
        pytest.param(b'{"webhookUrl": "https://service.example/auth"', id="near-names"),
    ],
)
async def test_an_unparsable_original_without_anything_secret_is_kept_as_it_came(
    original: bytes,
) -> None:
    [(_, letter)] = await dead_letters_of(original)

    assert base64.b64decode(letter.value_base64) == original
    assert not letter.redacted
    assert letter.value_sha256 == hashlib.sha256(original).hexdigest()


@pytest.mark.integration
async def test_a_large_rejected_message_is_dead_lettered_in_part_and_the_next_one_handled(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    original = json.dumps({"number": "9" * 800_000}).encode()
    handled: list[Ping] = []

    async def handle(event: Ping) -> None:
        handled.append(event)

    async with subscribed(
        infrastructure,
        unique_topics,
        "large",
        topic,
        handle,
        retry_delay=0.1,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (publisher, broker):
        await publisher.publish_many(
            [OutgoingMessage(topic, "k", original), OutgoingMessage(topic, "k", b'{"number": 2}')]
        )
        await broker.start()
        await wait_until(lambda: bool(handled), 10)

    [record] = await records_in(infrastructure, unique_topics.dead_letter(topic))
    assert len(record.value) < 400_000
    letter = DeadLetter.model_validate_json(record.value)
    assert base64.b64decode(letter.value_base64) == original[:KEPT_VALUE_BYTES]
    assert letter.truncated
    assert letter.value_size == len(original)
    assert letter.value_sha256 == hashlib.sha256(original).hexdigest()
    # The whole original is where the dead letter says, while the topic retains it.
    source = AIOKafkaConsumer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    await source.start()
    try:
        position = TopicPartition(topic, letter.partition)
        source.assign([position])
        source.seek(position, letter.offset)
        fetched = await asyncio.wait_for(source.getone(), 10)
    finally:
        await source.stop()
    assert hashlib.sha256(fetched.value or b"").hexdigest() == letter.value_sha256
    assert handled == [Ping(number=2)]


@pytest.mark.integration
async def test_a_batch_that_keeps_failing_backs_off_and_dead_letters_its_rejects_once(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    attempts: list[float] = []

    async def database_down(event: Ping) -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("database down")

    async with subscribed(
        infrastructure,
        unique_topics,
        "down",
        topic,
        database_down,
        retry_delay=0.05,
        max_retry_delay=0.8,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (publisher, broker):
        await publisher.publish_many(
            [
                OutgoingMessage(topic, "k", b"not json"),
                OutgoingMessage(topic, "k", b'{"number": 1}'),
            ]
        )
        await broker.start()
        await wait_until(lambda: len(attempts) >= 6, 10)
        # Alerting watches this: a consumer that fails again and again.
        assert failures_in_a_row("down") >= 5

    # Pauses of 0.05, 0.1, 0.2, 0.4 and 0.8 s, each plus a fetch.
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[4] > 0.7
    assert gaps[4] > 3 * gaps[0]
    letters = await records_in(infrastructure, unique_topics.dead_letter(topic))
    assert len(letters) == 1


@pytest.mark.integration
async def test_the_retry_delay_starts_over_after_a_batch_succeeds(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    attempts: dict[int, list[float]] = {1: [], 2: []}
    failures_before_success = {1: 4, 2: 1}

    async def flaky(event: Ping) -> None:
        attempts[event.number].append(time.monotonic())
        if len(attempts[event.number]) <= failures_before_success[event.number]:
            raise ConnectionError("database briefly unavailable")

    async with subscribed(
        infrastructure,
        unique_topics,
        "recovers",
        topic,
        flaky,
        retry_delay=0.05,
        max_retry_delay=1.6,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (publisher, broker):
        await publisher.publish(OutgoingMessage(topic, "k", b'{"number": 1}'))
        await broker.start()
        await wait_until(lambda: len(attempts[1]) == 5, 10)
        await publisher.publish(OutgoingMessage(topic, "k", b'{"number": 2}'))
        await wait_until(lambda: len(attempts[2]) == 2, 10)

    # Without the reset, event 2 would wait 0.8 s (the delay after event 1's 0.4 s).
    first, second = attempts[2]
    assert second - first < 0.5
    assert failures_in_a_row("recovers") == 0


def test_a_failure_streak_is_forgotten_only_once_its_partitions_are_all_elsewhere() -> None:
    gauge = CONSUMER_FAILURES_IN_A_ROW.labels(f"streak-{uuid.uuid4().hex[:8]}")
    forgotten: list[bool] = []
    streak = FailureStreak(gauge, lambda: forgotten.append(True))
    assert gauge._value.get() == 0

    assert streak.failed([("t", 0), ("t", 1)]) == 1
    assert streak.failed([("t", 0), ("t", 1)]) == 2
    assert gauge._value.get() == 2
    # One of its partitions is still here: the batch comes back here, and fails here.
    asyncio.run(streak.on_partitions_revoked({TopicPartition("t", 0), TopicPartition("t", 1)}))
    asyncio.run(streak.on_partitions_assigned({TopicPartition("t", 1), TopicPartition("t", 2)}))
    assert (streak.count, gauge._value.get(), forgotten) == (2, 2, [])
    # Neither is: the failing batch is another consumer's now, and so are its failures.
    asyncio.run(streak.on_partitions_assigned({TopicPartition("t", 2), TopicPartition("u", 0)}))
    assert (streak.count, gauge._value.get(), forgotten) == (0, 0, [True])
    # With nothing failing, an assignment changes nothing.
    asyncio.run(streak.on_partitions_assigned(set()))
    assert forgotten == [True]

    assert streak.failed([("t", 2)]) == 1
    streak.succeeded()
    assert (streak.count, gauge._value.get()) == (0, 0)


def test_a_batch_that_fails_after_its_partitions_were_handed_over_is_not_counted() -> None:
    gauge = CONSUMER_FAILURES_IN_A_ROW.labels(f"streak-{uuid.uuid4().hex[:8]}")
    streak = FailureStreak(gauge)
    assert streak.failed([("t", 0)]) == 1
    # Handed over while the batch was being tried again: its failure is reported, not kept.
    asyncio.run(streak.on_partitions_assigned({TopicPartition("t", 1)}))
    assert streak.failed([("t", 0)]) == 1
    assert (streak.count, gauge._value.get()) == (0, 0)
    # A batch of this consumer's own partitions counts as ever.
    assert streak.failed([("t", 1)]) == 1
    assert gauge._value.get() == 1


@pytest.mark.integration
async def test_the_failures_in_a_row_go_with_the_partitions_they_held_up(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    await ensure_topics(infrastructure.kafka_bootstrap_servers, [topic], partitions=2)
    group = f"{unique_topics.prefix}.moving"
    attempts: list[Ping] = []
    taken_over: list[Ping] = []

    async def database_down(event: Ping) -> None:
        attempts.append(event)
        raise ConnectionError("database down")

    async def database_up(event: Ping) -> None:
        taken_over.append(event)

    publisher = KafkaPublisher.create(
        infrastructure.kafka_bootstrap_servers, enable_idempotence=False, client_id="test"
    )
    brokers = []
    # A member id begins with its client id, and the assignor deals the partitions out in
    # member id order: the second consumer ("a-...") is dealt partition 0, the failing one.
    for client_id, name, handle in (
        ("z-first", "moving-first", database_down),
        ("a-second", "moving-second", database_up),
    ):
        broker = create_broker(infrastructure.kafka_bootstrap_servers, client_id=client_id)
        register_consumer(
            broker,
            ConsumerSpec(name, topic, group, TypeAdapter(Ping), handle),
            dead_letters=publisher,
            topics=unique_topics,
            retry_delay=0.05,
            max_retry_delay=0.2,
            fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
        )
        brokers.append(broker)
    first, second = brokers
    await publisher.start()
    try:
        key = key_on_partition(0, of=2)
        await publisher.publish(OutgoingMessage(topic, key, b'{"number": 1}'))
        await first.start()
        await wait_until(lambda: len(attempts) >= 4, 20)
        assert failures_in_a_row("moving-first") >= 3
        await second.start()
        await wait_until(lambda: bool(taken_over), 60)
        assert taken_over == [Ping(number=1)]
        # The first consumer holds partition 1 now, where nothing comes: no batch of its own
        # would have set its count back, and an alert on it would fire for ever.
        await wait_until(lambda: failures_in_a_row("moving-first") == 0, 10)
        await asyncio.sleep(0.5)
        assert failures_in_a_row("moving-first") == 0
        assert failures_in_a_row("moving-second") == 0
    finally:
        for broker in brokers:
            await broker.stop()
        await publisher.stop()


def key_on_partition(partition: int, *, of: int) -> str:
    """Return a key that Kafka's default partitioner puts on `partition` of `of`."""
    partitions = list(range(of))
    while True:
        key = uuid.uuid4().hex
        if default_partitioner(key.encode(), partitions, partitions) == partition:
            return key


def failures_in_a_row(consumer: str) -> float:
    """Return the consumer's failures-in-a-row gauge as /metrics shows it."""
    value = REGISTRY.get_sample_value(
        "webhook_tasks_consumer_failures_in_a_row", {"consumer": consumer}
    )
    assert value is not None, f"no failures-in-a-row gauge for {consumer}"
    return value


@pytest.mark.integration
async def test_stopping_does_not_wait_out_a_long_retry_delay(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    topic = unique_topics.task_requested
    attempted = asyncio.Event()

    async def database_down(event: Ping) -> None:
        attempted.set()
        raise ConnectionError("database down")

    async with subscribed(
        infrastructure,
        unique_topics,
        "stops",
        topic,
        database_down,
        retry_delay=30,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (publisher, broker):
        await publisher.publish(OutgoingMessage(topic, "k", b'{"number": 1}'))
        await broker.start()
        await asyncio.wait_for(attempted.wait(), 10)
        await asyncio.sleep(0.2)  # into the 30 s pause
        started = time.monotonic()
        await broker.stop()
        assert time.monotonic() - started < 3


@pytest.mark.integration
async def test_when_one_key_fails_the_other_keys_of_its_batch_stop_before_it_comes_again(
    infrastructure: Infrastructure, unique_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topics.task_requested
    failures: list[int] = []
    slow = {"running": 0, "most": 0, "cancelled": 0, "finished": 0}

    async def handle(event: Ping) -> None:
        if event.number == 1:
            if not failures:
                failures.append(1)
                await asyncio.sleep(0.1)
                raise ConnectionError("database briefly unavailable")
            return
        slow["running"] += 1
        slow["most"] = max(slow["most"], slow["running"])
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            slow["cancelled"] += 1
            raise
        finally:
            slow["running"] -= 1
        slow["finished"] += 1

    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    await producer.start()
    try:
        # One partition, so both keys come in one batch.
        await producer.send_and_wait(topic, b'{"number": 1}', key=b"a", partition=0)
        await producer.send_and_wait(topic, b'{"number": 2}', key=b"b", partition=0)
    finally:
        await producer.stop()
    caplog.set_level(logging.ERROR, logger="webhook_tasks_runtime.kafka")
    async with subscribed(
        infrastructure,
        unique_topics,
        "cancels",
        topic,
        handle,
        retry_delay=0.05,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (_, broker):
        await broker.start()
        await wait_until(lambda: slow["finished"] == 1, 10)

    assert slow == {"running": 0, "most": 1, "cancelled": 1, "finished": 1}
    [failure] = [record for record in caplog.records if record.message.startswith("batch failed")]
    assert failure.exc_info is not None
    assert failure.exc_info[0] is ConnectionError
    # The event that failed, not the one cancelled with it: where to look when one keeps failing.
    fields = vars(failure)
    assert (fields["event_topic"], fields["event_partition"], fields["event_offset"]) == (
        topic,
        0,
        0,
    )
    assert fields["failures_in_a_row"] == 1


@pytest.mark.integration
async def test_a_batch_interrupted_by_the_stop_is_left_uncommitted_and_is_no_failure(
    infrastructure: Infrastructure, unique_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topics.task_requested
    interrupted = asyncio.Event()

    async def stopping(event: Ping) -> None:
        interrupted.set()
        raise StoppingError("the service is stopping")

    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"number": 7}', key=b"a", partition=0)
    finally:
        await producer.stop()
    caplog.set_level(logging.INFO)
    async with subscribed(
        infrastructure,
        unique_topics,
        "stops",
        topic,
        stopping,
        fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
    ) as (_, broker):
        await broker.start()
        await asyncio.wait_for(interrupted.wait(), 20)
        started = time.monotonic()
        await broker.stop()
        # The interrupted batch is held (up to the longest back-off) only while running.
        assert time.monotonic() - started < 5

    # Not committed: the next start of the group (or another replica) gets the event again.
    reader = AIOKafkaConsumer(
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        group_id=f"{unique_topics.prefix}.stops",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        committed = await reader.committed(TopicPartition(topic, 0))
    finally:
        await reader.stop()
    assert not committed
    errors = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert errors == []
    [line] = [record for record in caplog.records if record.message.startswith("batch interrupted")]
    assert line.levelno == logging.INFO
    assert line.exc_info is None
