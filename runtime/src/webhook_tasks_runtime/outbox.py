"""The transactional outbox: events are written with the state change, published after commit.

A service adds its events to `outbox` inside the transaction that changes its
state; the relay publishes committed rows in order and deletes them. A crash
between commit and publish loses nothing: the rows wait for the next flush.
A row Kafka will never take (larger than a record may be) is moved to
`outbox_rejected`, with the reason, so that it does not hold back the rows behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import asyncpg
from aiokafka.errors import MessageSizeTooLargeError

from .backoff import FailingRounds, RetryDelays
from .kafka import MessagePublisher, OutgoingMessage
from .observability import OUTBOX_OLDEST_WAITING, OUTBOX_PUBLISHED

logger = logging.getLogger(__name__)


async def add_to_outbox(conn: asyncpg.Connection, messages: Sequence[OutgoingMessage]) -> None:
    """Queue `messages` in the caller's transaction."""
    if not messages:
        return
    await conn.executemany(
        "INSERT INTO outbox (topic, key, payload, traceparent) VALUES ($1, $2, $3, $4)",
        [(message.topic, message.key, message.value, message.traceparent) for message in messages],
    )


class KeyedEvent(Protocol):
    """An event that names its task: its correlation id is its Kafka key."""

    @property
    def correlation_id(self) -> str: ...

    def model_dump_json(self) -> str: ...


async def add_events_to_outbox(
    conn: asyncpg.Connection,
    topic: str,
    events: Sequence[KeyedEvent],
    *,
    traceparents: Sequence[str | None] | None = None,
) -> None:
    """Queue `events` for `topic` in the caller's transaction, keyed by correlation id.

    `traceparents`, one per event, name the trace each event continues (None: no trace).
    """
    if traceparents is None:
        traceparents = [None] * len(events)
    await add_to_outbox(
        conn,
        [
            OutgoingMessage(
                topic, event.correlation_id, event.model_dump_json().encode(), traceparent
            )
            for event, traceparent in zip(events, traceparents, strict=True)
        ],
    )


_LOCK_WAIT_SECONDS = 600.0
"""How long a relay waits, in all, for another replica's to finish publishing a batch."""


class OutboxRelay:
    """Publish committed outbox rows in id order; one relay at a time per schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: MessagePublisher,
        *,
        schema: str,
        batch_size: int = 500,
        idle_interval: float = 0.5,
        retry_delay: float = 1.0,
        lock_wait_step: float = 5.0,
    ) -> None:
        self._pool = pool
        # One wait for the relays' lock lasts at most `lock_wait_step`, less than a statement
        # may: a connection that died meanwhile is noticed, and the wait goes on in steps.
        self._lock_wait_step_ms = max(1, int(lock_wait_step * 1000))
        self._publisher = publisher
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._retry_delay = retry_delay
        self._wakeup = asyncio.Event()
        self._published = OUTBOX_PUBLISHED.labels(schema)
        self._oldest_waiting = OUTBOX_OLDEST_WAITING.labels(schema)
        self._oldest_waiting.set(0)
        digest = hashlib.sha256(f"outbox:{schema}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)

    def wake(self) -> None:
        """Ask for a flush now; called after a transaction that wrote outbox rows commits."""
        self._wakeup.set()

    async def flush(self) -> int:
        """Publish and delete waiting rows until none are left; return how many left the outbox."""
        done = 0
        while True:
            count = await self._flush_batch()
            done += count
            if count < self._batch_size:
                return done

    async def waiting(self) -> int:
        """Return how many rows wait to be published."""
        count: int = await self._pool.fetchval("SELECT count(*) FROM outbox")
        return count

    async def _flush_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            # A transaction-scoped lock keeps relays of several replicas from interleaving,
            # so each task's events leave in the order they were written.
            await self._take_turn(conn)
            # Its wait by the database's clock, which stamped created_at: no skew with ours.
            rows = await conn.fetch(
                """
                SELECT id, topic, key, payload, traceparent,
                    extract(epoch FROM clock_timestamp() - created_at)::float8 AS waited
                FROM outbox ORDER BY id LIMIT $1
                """,
                self._batch_size,
            )
            if not rows:
                self._oldest_waiting.set(0)
                return 0
            # Set before publishing: while Kafka refuses, each failing round shows it growing.
            self._oldest_waiting.set(max(0.0, rows[0]["waited"]))
            try:
                await self._publisher.publish_many([_message_of(row) for row in rows])
                published = len(rows)
            except MessageSizeTooLargeError:
                # A row is too large for Kafka, and every attempt would fail the same way: find
                # it by sending one row at a time. KafkaPublisher checks sizes before it sends
                # any of a batch, so none goes twice (unless the broker itself refused one).
                published = await self._publish_singly(conn, rows)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in rows]
            )
        self._published.inc(published)
        if len(rows) < self._batch_size:
            self._oldest_waiting.set(0)  # all that was waiting has gone
        return len(rows)

    async def _take_turn(self, conn: asyncpg.Connection) -> None:
        """Wait for the relays' lock, held while one publishes, in steps a statement may take."""
        # Mostly free: one round trip then, as before the steps.
        if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
            return
        give_up_at = time.monotonic() + _LOCK_WAIT_SECONDS
        await conn.execute(f"SET LOCAL lock_timeout = {self._lock_wait_step_ms}")
        while True:
            try:
                # A savepoint: a step that runs out leaves the batch's transaction usable.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
                return
            except asyncpg.LockNotAvailableError:
                if time.monotonic() > give_up_at:
                    raise

    async def _publish_singly(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> int:
        """Publish `rows` one at a time, setting aside those too large; return how many went."""
        published = 0
        for row in rows:
            try:
                await self._publisher.publish_many([_message_of(row)])
            except MessageSizeTooLargeError as error:
                await _set_aside(conn, row, str(error))
            else:
                published += 1
        return published

    async def run(self) -> None:
        """Flush whenever woken, and every `idle_interval` in case another process wrote rows."""
        # At most 5 s apart: once Kafka or PostgreSQL is back, events go soon.
        rounds = FailingRounds("outbox flush", logger, RetryDelays(self._retry_delay, 5.0))
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await asyncio.sleep(rounds.failed(error))
                continue
            rounds.succeeded()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._idle_interval)
            self._wakeup.clear()


def _message_of(row: asyncpg.Record) -> OutgoingMessage:
    return OutgoingMessage(row["topic"], row["key"], bytes(row["payload"]), row["traceparent"])


async def _set_aside(conn: asyncpg.Connection, row: asyncpg.Record, reason: str) -> None:
    # Kept for people to look at (and publish by hand once the limits allow it).
    await conn.execute(
        "INSERT INTO outbox_rejected (id, topic, key, payload, traceparent, reason, created_at)"
        " SELECT id, topic, key, payload, traceparent, $2, created_at FROM outbox WHERE id = $1",
        row["id"],
        reason,
    )
    logger.error(
        "Kafka refused an outbox row as too large; it is set aside in outbox_rejected",
        extra={
            "topic": row["topic"],
            "key": row["key"],
            "size_bytes": len(row["payload"]),
            "outbox_id": row["id"],
            "reason": reason,
        },
    )
