"""ReconnectingPublisher against a stand-in cluster that can be taken down and brought back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from webhook_tasks_gateway.publishing import KafkaUnavailableError, ReconnectingPublisher
from webhook_tasks_runtime.kafka import OutgoingMessage

MESSAGE = OutgoingMessage("topic", "key", b"{}")


class Cluster:
    """Whether Kafka answers, and every producer handed out."""

    def __init__(self) -> None:
        self.up = False
        self.too_large = False
        self.producers: list[Producer] = []

    def connect(self) -> Producer:
        producer = Producer(self)
        self.producers.append(producer)
        return producer


class Producer:
    """Stands in for KafkaPublisher: start and publish fail while the cluster is down."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.started = False
        self.stopped = False
        self.published: list[OutgoingMessage] = []

    async def start(self) -> None:
        if not self.cluster.up:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def publish(self, message: OutgoingMessage) -> None:
        if self.cluster.too_large:
            raise MessageSizeTooLargeError()
        if not self.cluster.up:
            raise KafkaTimeoutError()
        self.published.append(message)


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def publisher(cluster: Cluster) -> ReconnectingPublisher:
    return ReconnectingPublisher(
        cluster.connect,  # type: ignore[arg-type]
        first_retry_delay=0.01,
        max_retry_delay=0.02,
    )


async def test_starts_without_kafka_and_connects_when_it_comes(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await publisher.start()
    await eventually(lambda: len(cluster.producers) >= 3)

    assert not publisher.is_ready()
    with pytest.raises(KafkaUnavailableError):
        await publisher.publish(MESSAGE)

    cluster.up = True
    await eventually(publisher.is_ready)
    await publisher.publish(MESSAGE)
    await publisher.stop()

    *failed, connected = cluster.producers
    assert connected.published == [MESSAGE]
    assert all(producer.stopped and not producer.started for producer in failed)
    assert connected.stopped


async def test_a_failed_publish_makes_it_not_ready_until_kafka_answers_again(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    cluster.up = True
    await publisher.start()
    await eventually(publisher.is_ready)
    connected = cluster.producers[0]

    cluster.up = False
    with pytest.raises(KafkaTimeoutError):
        await publisher.publish(MESSAGE)
    assert not publisher.is_ready()
    await asyncio.sleep(0.05)
    assert not publisher.is_ready()

    cluster.up = True
    await eventually(publisher.is_ready)
    await publisher.publish(MESSAGE)
    await publisher.stop()

    assert connected.published == [MESSAGE]
    assert all(probe.stopped for probe in cluster.producers[1:])


async def test_a_publish_cancelled_by_a_timeout_counts_as_a_failure(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    cluster.up = True
    await publisher.start()
    await eventually(publisher.is_ready)

    async def never(message: OutgoingMessage) -> None:
        await asyncio.Event().wait()

    cluster.producers[0].publish = never  # type: ignore[method-assign]
    cluster.up = False
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await publisher.publish(MESSAGE)

    assert not publisher.is_ready()
    await publisher.stop()


async def test_a_message_too_large_says_nothing_about_kafka(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    cluster.up = True
    await publisher.start()
    await eventually(publisher.is_ready)
    cluster.too_large = True

    with pytest.raises(MessageSizeTooLargeError):
        await publisher.publish(MESSAGE)

    assert publisher.is_ready()
    await publisher.stop()


async def test_stop_while_connecting_leaves_no_producer_open(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await publisher.start()
    await eventually(lambda: len(cluster.producers) >= 2)

    await publisher.stop()
    count = len(cluster.producers)
    cluster.up = True
    await asyncio.sleep(0.05)

    assert len(cluster.producers) == count
    assert all(producer.stopped for producer in cluster.producers)
    assert not publisher.is_ready()
