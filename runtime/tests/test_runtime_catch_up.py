"""A handler waits until another topic's consumer group has handled what came before."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypedDict, Unpack

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from webhook_tasks_runtime.catch_up import (
    GroupBehindError,
    GroupCatchUp,
    StoppingError,
    UnknownTopicError,
)
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 3


class CatchUpOptions(TypedDict, total=False):
    timeout: float
    reading_interval: float


class Topic:
    """A fresh topic, a producer keyed like the services', and a group that commits by hand."""

    def __init__(self, infrastructure: Infrastructure) -> None:
        self.bootstrap = infrastructure.kafka_bootstrap_servers
        self.name = f"test-catch-up-{uuid.uuid4().hex[:12]}"
        self.group = f"{self.name}.group"
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        self.member = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )

    def catch_up(self, **options: Unpack[CatchUpOptions]) -> GroupCatchUp:
        return GroupCatchUp(
            self.bootstrap,
            topic=self.name,
            group_id=self.group,
            client_id="test",
            poll_interval=0.02,
            **options,
        )

    async def write(self, key: str, count: int = 1) -> int:
        """Write `count` records under `key`; return their partition."""
        for _ in range(count):
            delivered = await self.producer.send_and_wait(self.name, b"{}", key=key.encode())
        return int(delivered.partition)

    async def commit(self, partition: int, offset: int) -> None:
        await self.member.commit({TopicPartition(self.name, partition): offset})

    async def end(self, partition: int) -> int:
        tp = TopicPartition(self.name, partition)
        ends = await self.member.end_offsets([tp])
        return int(ends[tp])


@pytest.fixture
async def topic(infrastructure: Infrastructure) -> AsyncIterator[Topic]:
    made = Topic(infrastructure)
    await ensure_topics(made.bootstrap, [made.name], partitions=PARTITIONS)
    await made.producer.start()
    await made.member.start()
    # Assigned by hand (committing needs an assignment): it never joins the group.
    made.member.assign([TopicPartition(made.name, number) for number in range(PARTITIONS)])
    try:
        yield made
    finally:
        await made.member.stop()
        await made.producer.stop()


def key_on_another_partition(partition: int, than: str) -> str:
    """Return a key the default partitioner puts on a partition other than `than`'s."""
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(PARTITIONS))
    while True:
        key = uuid.uuid4().hex
        if DefaultPartitioner()(key.encode(), partitions, partitions) != partition:
            return key


async def test_a_wait_ends_once_the_group_commits_past_what_was_written_before(
    topic: Topic,
) -> None:
    key = "task-" + uuid.uuid4().hex
    partition = await topic.write(key, count=3)
    catch_up = topic.catch_up(timeout=30)
    await catch_up.start()
    try:
        waiting = asyncio.create_task(catch_up.wait(key, time.time()))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "returned before the group handled the records"
        await topic.commit(partition, 2)
        await asyncio.sleep(0.3)
        assert not waiting.done(), "returned with one record still unhandled"
        await topic.commit(partition, 3)
        await asyncio.wait_for(waiting, 5)
    finally:
        await catch_up.stop()


async def test_a_wait_covers_every_record_of_a_batch_written_at_once(topic: Topic) -> None:
    key = "task-" + uuid.uuid4().hex
    # Sent together, the records travel in one batch (as concurrent callbacks do from the
    # gateway); the embedded broker lists such a partition's end as the batch's first + 1.
    batch = topic.producer.create_batch()
    for _ in range(10):
        batch.append(key=key.encode(), value=b"{}", timestamp=None)
    partition = await topic.write(key)
    await (await topic.producer.send_batch(batch, topic.name, partition=partition))
    catch_up = topic.catch_up(timeout=30)
    await catch_up.start()
    try:
        waiting = asyncio.create_task(catch_up.wait(key, time.time()))
        await topic.commit(partition, 2)
        await asyncio.sleep(0.5)
        assert not waiting.done(), "returned with most of the batch unhandled"
        await topic.commit(partition, 11)
        await asyncio.wait_for(waiting, 5)
    finally:
        await catch_up.stop()


async def test_a_broker_that_does_not_answer_holds_neither_a_stop_nor_the_timeout(
    topic: Topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "task-" + uuid.uuid4().hex
    await topic.write(key)
    catch_up = topic.catch_up(timeout=0.5)
    await catch_up.start()

    async def no_answer(*_args: object) -> None:
        await asyncio.sleep(3600)

    try:
        monkeypatch.setattr(catch_up._consumer, "committed", no_answer)
        started = time.monotonic()
        with pytest.raises(GroupBehindError, match="did not answer"):
            await catch_up.wait(key, time.time())
        assert time.monotonic() - started < 5

        stopping = asyncio.Event()
        stopped = GroupCatchUp(
            topic.bootstrap,
            topic=topic.name,
            group_id=topic.group,
            client_id="test",
            timeout=30,
            stopping=stopping,
        )
        await stopped.start()
        try:
            monkeypatch.setattr(stopped._consumer, "committed", no_answer)
            waiting = asyncio.create_task(stopped.wait(key, time.time()))
            await asyncio.sleep(0.3)
            stopping.set()
            with pytest.raises(StoppingError):
                await asyncio.wait_for(waiting, 1)
        finally:
            await stopped.stop()
    finally:
        await catch_up.stop()


async def test_records_written_once_the_wait_began_or_on_other_partitions_hold_nothing_up(
    topic: Topic,
) -> None:
    key = "task-" + uuid.uuid4().hex
    partition = await topic.write(key, count=2)
    await topic.write(key_on_another_partition(partition, key), count=4)  # never handled
    catch_up = topic.catch_up(timeout=30)
    await catch_up.start()
    try:
        waiting = asyncio.create_task(catch_up.wait(key, time.time()))
        await asyncio.sleep(0.3)
        await topic.write(key, count=5)  # after the wait began, and never handled
        assert not waiting.done()
        await topic.commit(partition, 2)
        await asyncio.wait_for(waiting, 5)
    finally:
        await catch_up.stop()


async def test_a_moment_passed_during_another_wait_needs_only_what_was_written_before_it(
    topic: Topic,
) -> None:
    # The next batch's event: its moment passed while the previous batch still waited.
    key = "task-" + uuid.uuid4().hex
    partition = await topic.write(key)
    catch_up = topic.catch_up(timeout=30, reading_interval=0.05)
    await catch_up.start()
    try:
        first = asyncio.create_task(catch_up.wait(key, time.time()))
        await asyncio.sleep(0.3)
        moment = time.time()
        await asyncio.sleep(0.3)  # the first waiter reads the end again meanwhile
        await topic.write(key, count=5)  # after the moment: the second need not wait for them
        assert not first.done()
        await topic.commit(partition, 1)
        await asyncio.wait_for(first, 5)

        await asyncio.wait_for(catch_up.wait(key, moment), 2)

        with pytest.raises(TimeoutError):
            # A moment after the five records still needs them.
            await asyncio.wait_for(catch_up.wait(key, time.time()), 1)
    finally:
        await catch_up.stop()


async def test_a_key_whose_partition_is_caught_up_does_not_wait(topic: Topic) -> None:
    behind_key = "task-" + uuid.uuid4().hex
    behind = await topic.write(behind_key, count=3)
    caught_up_key = key_on_another_partition(behind, behind_key)
    caught_up = await topic.write(caught_up_key, count=2)
    await topic.commit(caught_up, 2)
    catch_up = topic.catch_up(timeout=30)
    await catch_up.start()
    try:
        await asyncio.wait_for(catch_up.wait(caught_up_key, time.time()), 5)
        waiting = asyncio.create_task(catch_up.wait(behind_key, time.time()))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        waiting.cancel()
    finally:
        await catch_up.stop()


async def test_a_wait_for_a_moment_to_come_starts_only_then(topic: Topic) -> None:
    key = "task-" + uuid.uuid4().hex
    partition = await topic.write(key)
    await topic.commit(partition, 1)
    catch_up = topic.catch_up(timeout=30)
    await catch_up.start()
    try:
        waiting = asyncio.create_task(catch_up.wait(key, time.time() + 0.6))
        await asyncio.sleep(0.2)
        await topic.write(key)  # before the moment: the wait must cover it
        await asyncio.sleep(0.8)
        assert not waiting.done(), "the end was read before the moment"
        await topic.commit(partition, 2)
        await asyncio.wait_for(waiting, 5)
    finally:
        await catch_up.stop()


async def test_a_group_that_stays_behind_fails_the_wait_after_the_timeout(topic: Topic) -> None:
    key = "task-" + uuid.uuid4().hex
    await topic.write(key, count=2)
    catch_up = topic.catch_up(timeout=0.5)
    await catch_up.start()
    try:
        started = time.monotonic()
        with pytest.raises(GroupBehindError, match=r"committed 0 .* not yet 2"):
            await catch_up.wait(key, time.time())
        assert time.monotonic() - started < 5
    finally:
        await catch_up.stop()


async def test_a_wait_ends_with_an_error_as_soon_as_the_service_stops(topic: Topic) -> None:
    key = "task-" + uuid.uuid4().hex
    await topic.write(key)
    stopping = asyncio.Event()
    catch_up = GroupCatchUp(
        topic.bootstrap,
        topic=topic.name,
        group_id=topic.group,
        client_id="test",
        poll_interval=10.0,
        stopping=stopping,
    )
    await catch_up.start()
    try:
        waiting = asyncio.create_task(catch_up.wait(key, time.time()))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        stopping.set()
        with pytest.raises(StoppingError):
            await asyncio.wait_for(waiting, 1)
    finally:
        await catch_up.stop()


async def test_a_topic_the_cluster_does_not_have_is_a_clear_error(
    infrastructure: Infrastructure,
) -> None:
    catch_up = GroupCatchUp(
        infrastructure.kafka_bootstrap_servers,
        topic=f"test-missing-{uuid.uuid4().hex[:12]}",
        group_id="nobody",
        client_id="test",
    )
    await catch_up.start()
    try:
        with pytest.raises(UnknownTopicError, match="no partitions"):
            await catch_up.wait("k", time.time())
    finally:
        await catch_up.stop()
