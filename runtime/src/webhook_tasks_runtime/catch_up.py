"""Wait until a consumer group has handled everything a partition held at a given moment.

Events of one key on two topics have no order between them: a consumer of each
topic may lag the other by any amount. When one event must not be applied before
the other topic's events written earlier (a deadline before the callbacks that
were accepted before it), its handler waits here first: it notes the partition's
end offset at (or after) the moment, then waits until the other topic's group has
committed at least that far. Commits come only after handlers return, so every
record written before the moment has then been applied. Neither clocks of other
hosts nor record timestamps are involved.

While a waiter polls, it also reads the partition's end every `reading_interval`
and keeps these readings for a while: an event whose moment passed during that wait
(the next batch's, which its consumer fetches only once this one is done) then needs
only the end read just after its moment, not the end when its own turn comes, so a
lagging group delays it by about its lag once, not twice.

The end is read from the partition itself, not taken from ListOffsets alone: the
embedded broker answers that with the offset after the first record of the last
batch, and a producer's batch holds many records (the gateway's callbacks, for
one), so a wait would end with the rest of that batch unapplied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from .kafka import HandlerInterrupted
from .partitioning import partition_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SLOW_WAIT_SECONDS = 1.0
"""A wait longer than this is logged when it ends."""
_SHORTEST_CALL_SECONDS = 2.0
"""A request to the cluster may take this long even when the wait's timeout is nearer."""
_TAIL_READ_TIMEOUT_MS = 2_000
"""How long reading the last batch of a partition may take before the listed end is used."""
_KEPT_READINGS = 600
"""Readings of a partition's end kept for later waiters: a minute's at the default interval."""


class CatchUpError(RuntimeError):
    """The group could not be shown to have caught up."""


class GroupBehindError(CatchUpError):
    """The group did not commit past the partition's end offset in time."""


class UnknownTopicError(CatchUpError):
    """The cluster's metadata names no partitions for the topic."""


class StoppingError(CatchUpError, HandlerInterrupted):
    """The service is stopping: the group may not commit again before it has stopped."""


class CatchUp(Protocol):
    """Wait until every record of `key`'s partition written before `moment` has been handled."""

    async def wait(self, key: str, moment: float) -> None: ...


class NoCatchUp:
    """A CatchUp for a service whose two inputs cannot race (one in-memory broker, in tests)."""

    async def wait(self, key: str, moment: float) -> None:
        """Return at once."""


@dataclass(slots=True)
class _Partition:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    readings: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_KEPT_READINGS))
    """(when, end) in the order taken: each end covers every record written before its time."""
    committed: int = -1
    """The group's committed offset as last read; committed offsets only move forward."""

    def end_as_of(self, moment: float) -> int | None:
        """Return the end read first at or after `moment`, if one was."""
        found = None
        # Newest first, as far back as readings stay at or after the moment.
        for noted_at, end in reversed(self.readings):
            if noted_at < moment:
                break
            found = end
        return found


class GroupCatchUp:
    """A CatchUp on the committed offsets of `group_id` for `topic`, read from the cluster.

    Keys are mapped to partitions as the producers map them (Kafka's default
    partitioner, murmur2 of the key's UTF-8).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str,
        group_id: str,
        client_id: str,
        timeout: float = 30.0,
        poll_interval: float = 0.02,
        reading_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
        request_timeout_ms: int = 10_000,
        stopping: asyncio.Event | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._topic = topic
        self._stopping = stopping or asyncio.Event()
        self._group_id = group_id
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._reading_interval = reading_interval
        self._clock = clock
        # Never subscribed, so it never joins the group: it only reads the group's offsets.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            request_timeout_ms=request_timeout_ms,
            **(client_options or {}),
        )
        # Group-less, assigned a partition only while it reads that partition's last batch.
        self._tail = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            enable_auto_commit=False,
            request_timeout_ms=request_timeout_ms,
            **(client_options or {}),
        )
        self._tail_lock = asyncio.Lock()
        self._partitions: dict[int, _Partition] = {}

    async def start(self) -> None:
        """Connect to the cluster."""
        await self._consumer.start()
        await self._tail.start()

    async def stop(self) -> None:
        """Disconnect."""
        await self._tail.stop()
        await self._consumer.stop()

    async def wait(self, key: str, moment: float) -> None:
        """Wait until the group has committed past `key`'s partition's end as of `moment`.

        Raises GroupBehindError when that takes longer than the timeout, and StoppingError
        once `stopping` is set while it waits.
        """
        started = time.monotonic()
        number = await self._partition_of(key)
        state = self._partitions.setdefault(number, _Partition())
        partition = TopicPartition(self._topic, number)
        polls = 0
        # One waiter per partition reads offsets at a time; the rest reuse what it read.
        async with state.lock:
            target = state.end_as_of(moment)
            if target is None:
                if (early := moment - self._clock()) > 0:
                    await asyncio.sleep(early)
                target = await self._read_end(state, partition, started)
            last_reading = time.monotonic()
            while state.committed < target:
                if polls:
                    if time.monotonic() - started > self._timeout:
                        raise GroupBehindError(
                            f"group {self._group_id} has committed {state.committed} of "
                            f"{self._topic}[{number}], not yet {target}, "
                            f"after {self._timeout:.0f}s"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._poll_interval)
                    if time.monotonic() - last_reading >= self._reading_interval:
                        # For the waiters whose moments pass meanwhile; this one's is set.
                        await self._read_end(state, partition, started)
                        last_reading = time.monotonic()
                committed = await self._bounded(
                    lambda: self._consumer.committed(partition), started
                )
                state.committed = max(state.committed, committed if committed is not None else 0)
                polls += 1
        waited = time.monotonic() - started
        # Logged by the waiter that polled, not by each one that found the work done.
        if polls > 1 and waited > _SLOW_WAIT_SECONDS:
            logger.warning(
                "waited for a consumer group to catch up",
                extra={
                    "group": self._group_id,
                    "partition": number,
                    "waited_seconds": round(waited, 3),
                },
            )

    async def _read_end(self, state: _Partition, partition: TopicPartition, started: float) -> int:
        """Read the partition's end now, keep the reading, and return the end."""
        noted_at = self._clock()
        end = await self._bounded(lambda: self._end_of(partition), started)
        state.readings.append((noted_at, end))
        return end

    async def _bounded(self, call: Callable[[], Awaitable[T]], started: float) -> T:
        """Await `call()` unless the wait's timeout passes or the service stops first."""
        # A broker that does not answer keeps aiokafka retrying inside the call: neither the
        # timeout nor a stop may wait for it.
        if self._stopping.is_set():
            raise StoppingError("the service is stopping")
        work = asyncio.ensure_future(call())
        stopping = asyncio.ensure_future(self._stopping.wait())
        # At least a few seconds even at the end of the wait: a broker that answers at all
        # answers within them, and its answer is worth more than a timeout.
        left = max(self._timeout - (time.monotonic() - started), _SHORTEST_CALL_SECONDS)
        try:
            await asyncio.wait({work, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if work.done():
            return work.result()
        work.cancel()
        if self._stopping.is_set():
            raise StoppingError("the service is stopping")
        raise GroupBehindError(
            f"the cluster did not answer for group {self._group_id} within {self._timeout:.0f}s"
        )

    async def _end_of(self, partition: TopicPartition) -> int:
        """Return the offset after the partition's last record."""
        ends = await self._consumer.end_offsets([partition])
        listed = int(ends[partition])
        if listed == 0:
            return 0
        # The batch holding the record before the listed end is the last one; its last
        # record ends the partition (later batches came after the moment).
        async with self._tail_lock:
            self._tail.assign([partition])
            try:
                self._tail.seek(partition, listed - 1)
                fetched = await self._tail.getmany(partition, timeout_ms=_TAIL_READ_TIMEOUT_MS)
            finally:
                self._tail.unsubscribe()
        records = fetched.get(partition, [])
        if not records:
            logger.warning(
                "could not read a partition's last batch; using its listed end",
                extra={"topic": partition.topic, "partition": partition.partition},
            )
            return listed
        return max(listed, max(int(record.offset) for record in records) + 1)

    async def _partition_of(self, key: str) -> int:
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            # The consumer tracks every topic's metadata (it subscribes to none); a topic
            # created after it started appears once the metadata is read again.
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self._topic)
            if not partitions:
                raise UnknownTopicError(f"the cluster knows no partitions of {self._topic}")
        # Partitions are numbered from 0: the count is all the mapping needs.
        return partition_of(key.encode(), len(partitions))
