"""Kafka: a pipelined producer, and consumers that dead-letter bad input and retry the rest.

A consumer commits its offsets only after its handler has returned for every
message of a batch; a handler that raises makes the batch come again (after a
pause that doubles while the batch keeps failing), so effects must be idempotent.
Each failure is logged with the event that failed, and a gauge counts the failures
in a row, so a consumer held up by one event is seen and the event found; the count
is dropped when a rebalance gives the partitions it held up to another consumer.
A handler that raises HandlerInterrupted was stopped by the service's own stop:
its batch comes again after the restart (or to another replica), and nothing is
logged as a failure.
Messages that can never be accepted (not JSON, wrong schema, unknown version) go
to `<topic>.dead-letter` with the reason and the original bytes (at most 256 KiB of
them), and the consumer moves on. No secret goes with them: in JSON the values of
secret-named keys are masked, and bytes that are not JSON but may hold a secret (a
secret key name, escaped or not, or a bearer token) are left out, only their size kept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faststream import AckPolicy
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaBroker, KafkaMessage, Topic
from faststream.security import BaseSecurity
from opentelemetry.context import Context, attach, detach
from prometheus_client import Gauge
from pydantic import BaseModel, TypeAdapter, ValidationError
from webhook_tasks_contracts import DeadLetter, Topics

from .backoff import RetryDelays
from .logging import correlation_context
from .observability import (
    BATCH_SECONDS,
    BATCHES_FAILED,
    CONSUMER_FAILURES_IN_A_ROW,
    EVENTS_CONSUMED,
)
from .partitioning import default_partitioner
from .tracing import context_from_headers

logger = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=BaseModel)
HashableT = TypeVar("HashableT", bound=Hashable)

KEPT_VALUE_BYTES = 256 * 1024
"""A dead letter keeps at most this much of the original: base64 in JSON, it stays far below
the producer's request limit (1 MiB by default) however large the original was."""
_KEPT_TEXT_CHARS = 1024
"""A dead letter keeps at most this much of the original's key and of the reason."""
_SECRET_KEYS = frozenset({"webhookauth", "webhook_auth", "authorization"})
"""JSON keys (compared case-insensitively) whose values a dead letter masks; named anywhere in
an original that is not JSON, they make the dead letter leave it out."""
_MASK = "**********"
_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)
"""A JSON escape: a backslash and `uXXXX` or one character."""
_ESCAPED_CONTROLS = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_BEARER_TOKEN = re.compile(r"bearer\s+[\w.~+/-]")
"""A bearer credential (RFC 6750) in casefolded text, as an Authorization header value has it."""
_REMEMBERED_DEAD_LETTERS = 10_000
"""Positions a consumer remembers having dead-lettered: far more than a batch that comes
again can hold."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to produce."""

    topic: str
    key: str | None
    value: bytes
    traceparent: str | None = None
    """The W3C trace context the message continues, sent as its `traceparent` header."""

    @property
    def headers(self) -> list[tuple[str, bytes]] | None:
        """Return the Kafka headers to send with the message, if any."""
        if self.traceparent is None:
            return None
        return [("traceparent", self.traceparent.encode())]


def message_for(topic: str, event: BaseModel, *, key: str | None) -> OutgoingMessage:
    """Serialise `event` as JSON for `topic`."""
    return OutgoingMessage(topic, key, event.model_dump_json().encode())


class MessagePublisher(Protocol):
    """Produce messages durably (acks=all) and return only once all are acknowledged."""

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None: ...


class KafkaPublisher:
    """A MessagePublisher on one aiokafka producer, pipelining each batch."""

    def __init__(self, producer: AIOKafkaProducer, *, max_request_size: int) -> None:
        self._producer = producer
        self._max_request_size = max_request_size

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        *,
        enable_idempotence: bool,
        client_id: str,
        max_request_size: int = 1024 * 1024,
        **options: Any,
    ) -> KafkaPublisher:
        """Build an unstarted publisher with durable settings; call it inside a running loop.

        `max_request_size` caps each record (aiokafka's default: 1 MiB); the topics written
        to must allow as much in their max.message.bytes.
        """
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=options.pop("linger_ms", 2),
            max_request_size=max_request_size,
            partitioner=default_partitioner,
            **options,
        )
        return cls(producer, max_request_size=max_request_size)

    async def start(self) -> None:
        """Connect to the cluster."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def check(self) -> None:
        """Ask the cluster for its metadata; raise unless a broker answers."""
        # One request on a connection the producer keeps: cheap enough for a readiness probe.
        await self._producer.client.fetch_all_metadata()

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send every message, then wait for all acknowledgements.

        Raises MessageSizeTooLargeError, having sent none, when one is larger than a record may be.
        """
        # aiokafka checks each record as it is sent, after the ones before it are on their way;
        # checking all first lets a caller retry the rest without sending anything twice.
        for message in messages:
            self._check_size(message)
        pending = [
            await self._producer.send(
                message.topic,
                message.value,
                key=message.key.encode() if message.key is not None else None,
                headers=message.headers,
            )
            for message in messages
        ]
        await asyncio.gather(*pending)

    async def publish(self, message: OutgoingMessage) -> None:
        """Send one message and wait for its acknowledgement."""
        # Not publish_many([message]): without the list and gather, a request that publishes
        # one message (the gateway's) costs ~10% less CPU.
        delivery = await self._producer.send(
            message.topic,
            message.value,
            key=message.key.encode() if message.key is not None else None,
            headers=message.headers,
        )
        await delivery

    def _check_size(self, message: OutgoingMessage) -> None:
        # The estimate aiokafka's send() compares with max_request_size.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            message.key.encode() if message.key is not None else None,
            message.value,
            message.headers or [],
        )
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"the record is {size} bytes; the producer's max_request_size is "
                f"{self._max_request_size}"
            )


class BrokerPublisher:
    """A MessagePublisher through a FastStream broker (in-memory in component tests)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish each message in order."""
        for message in messages:
            await self._broker.publish(
                message.value,
                message.topic,
                key=message.key.encode() if message.key is not None else None,
                headers=(
                    {"traceparent": message.traceparent}
                    if message.traceparent is not None
                    else None
                ),
            )


class HandlerInterrupted(Exception):  # noqa: N818 (an event, as asyncio.CancelledError)
    """The service is stopping, so the handler stopped; its batch is delivered again."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec(Generic[EventT]):
    """What one consumer reads and what it does with each event."""

    name: str
    topic: str
    group_id: str
    adapter: TypeAdapter[EventT]
    handle: Callable[[EventT], Awaitable[None]]
    correlation_of: Callable[[EventT], str | None] = lambda _event: None
    max_records: int = 200
    concurrency: int = 64


class _Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


_Position = tuple[str, int, int, str]
"""A record's topic, partition, offset and the SHA-256 of its value."""


async def _raw_bodies(message: Any) -> Any:
    # Keep the bytes: the consumer validates them itself so it can dead-letter what fails.
    return message.body


class FailureStreak(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Count a consumer's failed batches in a row, on its gauge; forget them with their partitions.

    A batch that keeps failing holds its partitions up. Once a rebalance hands those to
    another replica, the failures are that replica's to count: this one's gauge would
    otherwise stay up until its next batch, which may be a long time coming.
    """

    def __init__(self, gauge: Gauge, on_forgotten: Callable[[], None] = lambda: None) -> None:
        self.count = 0
        self._gauge = gauge
        self._on_forgotten = on_forgotten
        self._failing: frozenset[tuple[str, int]] = frozenset()
        self._assigned: frozenset[tuple[str, int]] | None = None
        gauge.set(0)

    def failed(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Count one more failed batch, of records from `partitions`; return the count."""
        self.count += 1
        count = self.count
        self._failing = frozenset(partitions)
        if self._assigned is not None and self._assigned.isdisjoint(self._failing):
            # Its partitions were handed over while it ran: the batch is another's now.
            self._forget()
        else:
            self._gauge.set(count)
        return count

    def succeeded(self) -> None:
        """Start the count over: a batch went through."""
        self.count = 0
        self._failing = frozenset()
        self._gauge.set(0)

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Keep the count: the same partitions may come back in the assignment that follows."""

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Forget the failures if none of the partitions they held up is this consumer's now."""
        self._assigned = frozenset((partition.topic, partition.partition) for partition in assigned)
        if self.count and self._assigned.isdisjoint(self._failing):
            self._forget()

    def _forget(self) -> None:
        logger.info(
            "the partitions of the failing batch went to another consumer; its failures are "
            "that consumer's to count",
            extra={"failures_in_a_row": self.count},
        )
        self.succeeded()
        self._on_forgotten()


def register_consumer(
    broker: KafkaBroker,
    spec: ConsumerSpec[Any],
    *,
    dead_letters: MessagePublisher,
    topics: Topics,
    retry_delay: float = 1.0,
    max_retry_delay: float = 30.0,
    fetch_max_wait_ms: int = 500,
    poll_interval_ms: int = 20,
) -> None:
    """Subscribe `spec` with dead-lettering, per-key ordering and commit after effects."""
    semaphore = asyncio.Semaphore(spec.concurrency)
    backoff = RetryDelays(retry_delay, max_retry_delay)
    # A failing batch comes again with the messages it rejected: each goes out once.
    already_dead_lettered: _Recent[_Position] = _Recent(_REMEMBERED_DEAD_LETTERS)

    async def handle_in_order(
        events: list[tuple[Any, Context | None, _Record]], failed_at: dict[int, _Record]
    ) -> None:
        async with semaphore:
            for event, trace_context, record in events:
                # The producer's trace, if it sent one, is the parent of what the handler does.
                token = attach(trace_context) if trace_context is not None else None
                try:
                    with correlation_context(spec.correlation_of(event)):
                        await spec.handle(event)
                except Exception as error:
                    # Which event failed: the log names it, for an event that fails every time.
                    # The first to fail with it: one error raised to several handlers is theirs.
                    failed_at.setdefault(id(error), record)
                    raise
                finally:
                    if token is not None:
                        detach(token)

    handled = EVENTS_CONSUMED.labels(spec.name, "handled")
    dead_lettered = EVENTS_CONSUMED.labels(spec.name, "dead_lettered")
    failed = BATCHES_FAILED.labels(spec.name)
    # Forgotten with the partitions they held up, the failures' back-off starts over too.
    streak = FailureStreak(CONSUMER_FAILURES_IN_A_ROW.labels(spec.name), backoff.reset)
    duration = BATCH_SECONDS.labels(spec.name)

    subscriber = broker.subscriber(
        # Never created here: FastStream would make it one partition on one broker, where
        # production wants the partitions and replicas deploy/kubernetes/topics.yaml gives it.
        Topic(spec.topic, declare=False),
        group_id=spec.group_id,
        batch=True,
        max_records=spec.max_records,
        fetch_max_wait_ms=fetch_max_wait_ms,
        # FastStream's batch consumer sleeps this long after a look that found nothing, and
        # an idle consumer mostly finds nothing: at its default (200 ms) an event reaching an
        # idle service waited up to 200 ms more per hop (measured end to end at 3 tasks/s:
        # task event -> request p50 90 ms, 19 ms at 20 ms).
        batch_timeout_ms=poll_interval_ms,
        auto_offset_reset="earliest",
        decoder=_raw_bodies,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=spec.name,
        listener=streak,
    )

    @subscriber
    async def consume(bodies: list[bytes], message: KafkaMessage) -> None:
        with duration.time():
            await consume_batch(bodies, message)

    async def consume_batch(bodies: list[bytes], message: KafkaMessage) -> None:
        records: Sequence[_Record] = _records_of(message, bodies, spec.topic)
        by_key: dict[bytes | None, list[tuple[Any, Context | None, _Record]]] = defaultdict(list)
        failed_at: dict[int, _Record] = {}
        rejected: list[tuple[_Position, DeadLetter]] = []
        for record in records:
            try:
                event = spec.adapter.validate_json(record.value or b"")
            except ValidationError as error:
                letter = _dead_letter(record, spec.name, _reason(error))
                rejected.append((_position(record), letter))
                continue
            by_key[record.key].append((event, context_from_headers(record.headers), record))
        unsent = [
            (position, letter)
            for position, letter in rejected
            if position not in already_dead_lettered
        ]
        try:
            if unsent:
                await dead_letters.publish_many(
                    [_message_of(letter, topics) for _, letter in unsent]
                )
                already_dead_lettered.update(position for position, _ in unsent)
                logger.warning(
                    "dead-lettered events",
                    extra={"consumer": spec.name, "count": len(unsent)},
                )
            # One task's events keep their order; different tasks run concurrently.
            await _run_all(handle_in_order(events, failed_at) for events in by_key.values())
            dead_lettered.inc(len(rejected))
            handled.inc(len(records) - len(rejected))
        except HandlerInterrupted as interruption:
            # Not a failure: uncommitted, the batch is the next start's (or another replica's).
            logger.info(
                "batch interrupted by the stop; it will be delivered again",
                extra={"consumer": spec.name, "records": len(records), "reason": str(interruption)},
            )
            # Held until the subscriber stops, so it is not fetched and interrupted again.
            await pause(max_retry_delay)
            # FastStream's signal to rewind without an error of its own in the log.
            raise NackMessage() from None
        except Exception as error:
            failed.inc()
            failures_in_a_row = streak.failed(
                (record.topic, record.partition) for record in records
            )
            delay = backoff.next_delay()
            extra: dict[str, Any] = {
                "consumer": spec.name,
                "records": len(records),
                "retry_in_seconds": delay,
                "failures_in_a_row": failures_in_a_row,
            }
            if (failing := failed_at.get(id(error))) is not None:
                extra |= {
                    "event_topic": failing.topic,
                    "event_partition": failing.partition,
                    "event_offset": failing.offset,
                }
            logger.exception("batch failed; it will be delivered again", extra=extra)
            await pause(delay)
            raise
        streak.succeeded()
        backoff.reset()

    async def pause(seconds: float) -> None:
        # Stopping waits for the batch in hand: a long back-off must not hold it up, and
        # nothing but `running` tells that the subscriber is stopping.
        deadline = time.monotonic() + seconds
        while subscriber.running and (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, 0.1))


async def _run_all(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run `calls` concurrently; when one fails, cancel and await the rest, then raise its error."""
    # Not gather: the others would run on while the failed batch comes again, so one event
    # would run twice at once and a key's later events could overtake its earlier ones.
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(call)
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None


class _Recent(Generic[HashableT]):
    """The last `capacity` items added, for membership tests."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: dict[HashableT, None] = {}

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def update(self, items: Iterable[HashableT]) -> None:
        """Add `items`, forgetting the oldest beyond the capacity."""
        for item in items:
            self._items[item] = None
        while len(self._items) > self._capacity:
            del self._items[next(iter(self._items))]


def _records_of(message: KafkaMessage, bodies: list[bytes], topic: str) -> Sequence[_Record]:
    raw = message.raw_message
    if (
        isinstance(raw, (list, tuple))
        and len(raw) == len(bodies)
        and all(hasattr(record, "offset") for record in raw)
    ):
        return raw
    # The in-memory test broker hands over bodies only.
    return [_BareRecord(topic, 0, index, None, body, ()) for index, body in enumerate(bodies)]


@dataclass(frozen=True, slots=True)
class _BareRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def _reason(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(part) for part in item["loc"]) or "message"
        problems.append(f"{location}: {item['msg']}")
    return "; ".join(problems)


def _dead_letter(record: _Record, consumer: str, reason: str) -> DeadLetter:
    original = record.value or b""
    kept, redacted = _without_secrets(original)
    return DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        consumer=consumer,
        reason=reason[:_KEPT_TEXT_CHARS],
        key=(
            record.key.decode(errors="replace")[:_KEPT_TEXT_CHARS]
            if record.key is not None
            else None
        ),
        value_base64=base64.b64encode(kept[:KEPT_VALUE_BYTES]).decode(),
        value_size=len(original),
        # Not of a redacted original: beside the masked copy, it would let a weak secret be
        # guessed offline.
        value_sha256=None if redacted else hashlib.sha256(original).hexdigest(),
        truncated=len(kept) > KEPT_VALUE_BYTES,
        redacted=redacted,
    )


def _message_of(letter: DeadLetter, topics: Topics) -> OutgoingMessage:
    return message_for(topics.dead_letter(letter.source_topic), letter, key=letter.key)


def _position(record: _Record) -> _Position:
    # With the digest: the in-memory test broker numbers every message 0, and a topic
    # deleted and created again starts its offsets over. Of the original, not of the dead
    # letter: dead letters that left out what they hide all look alike, and this one stays
    # in memory.
    digest = hashlib.sha256(record.value or b"").hexdigest()
    return (record.topic, record.partition, record.offset, digest)


def _without_secrets(value: bytes) -> tuple[bytes, bool]:
    """Return what a dead letter may keep of `value`, and whether secrets were hidden.

    JSON keeps everything but the values of secret-named keys, masked at any depth, and
    strings that may hold a secret themselves (a document double-encoded as a string). Bytes
    that are not JSON are kept as they are unless they may hold a secret: a secret key name
    anywhere, in any case, read with or without undoing JSON escapes, or `Bearer` and a
    token. Then none of them is kept: in bytes no parser can read, where a secret ends
    cannot be told, so dropping them all is the only masking that cannot miss.
    """
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        # Not JSON to Python (not JSON at all, cut short, nested too deep, an integer over
        # 4300 digits, or not UTF-8): without keys, a secret cannot be told from what
        # surrounds it, so a search that matches more than it must decides. A false match
        # only costs the copy here: the original stays on the source topic.
        if _may_hold_secret(value):
            return b"", True
        return value, False
    if isinstance(document, str):
        document = [document]  # masked as an item, then unwrapped
        if not _mask_secrets(document):
            return value, False
        return json.dumps(document[0]).encode(), True
    if not _mask_secrets(document):
        return value, False
    # ASCII: a string may hold a lone surrogate (valid as a JSON escape), which UTF-8 cannot.
    return json.dumps(document, separators=(",", ":")).encode(), True


def _may_hold_secret(value: bytes) -> bool:
    """Tell whether unparsed bytes name a secret key or hold a bearer token, however written."""
    # Without NULs, ASCII in UTF-16 or UTF-32 (which json.loads also reads) reads as ASCII;
    # bytes that are not UTF-8 are skipped, so they cannot split a name.
    text = value.replace(b"\0", b"").decode(errors="ignore")
    # Both readings: undoing escapes could also break up a name that is not escaped.
    readings = (text.casefold(), _JSON_ESCAPE.sub(_unescaped, text).casefold())
    return any(
        any(name in reading for name in _SECRET_KEYS) or _BEARER_TOKEN.search(reading)
        for reading in readings
    )


def _unescaped(escape: re.Match[str]) -> str:
    """Return the character a JSON escape stands for (any other character for itself)."""
    code, character = escape.groups()
    if code is not None:
        return chr(int(code, 16))
    return _ESCAPED_CONTROLS.get(character, character)


def _mask_secrets(document: Any) -> bool:
    """Mask in place secret-named keys' values and strings that may hold a secret, at any depth.

    Return whether there were any. A string is looked at as unparsed bytes are: it may be
    a JSON document itself (`"taskMetadata": "{\"webhookAuth\": ...}"`), which the schema
    refused, so no key of it was ever read.
    """
    masked = False
    # A stack, not recursion: a document json.loads could nest is not too deep to walk.
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key.casefold() in _SECRET_KEYS or _is_secret_text(value):
                    node[key] = _MASK
                    masked = True
                else:
                    pending.append(value)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if _is_secret_text(item):
                    node[index] = _MASK
                    masked = True
                else:
                    pending.append(item)
    return masked


def _is_secret_text(value: Any) -> bool:
    return isinstance(value, str) and _may_hold_secret(value.encode(errors="surrogatepass"))


def create_broker(
    bootstrap_servers: str,
    *,
    client_id: str,
    graceful_timeout: float = 15.0,
    security: BaseSecurity | None = None,
) -> KafkaBroker:
    """Build a consuming FastStream broker; publishing goes through a KafkaPublisher."""
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        graceful_timeout=graceful_timeout,
        logger=logging.getLogger("faststream"),
        security=security,
    )


async def ensure_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    *,
    partitions: int = 3,
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics that do not exist yet, with `configs`; existing ones are left as is."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        num_partitions=partitions,
                        replication_factor=replication,
                        topic_configs=dict(configs or {}),
                    )
                    for name in missing
                ]
            )
    finally:
        await admin.close()
