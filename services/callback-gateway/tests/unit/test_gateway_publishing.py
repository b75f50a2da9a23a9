"""ReconnectingPublisher against a stand-in cluster that can be taken down and brought back."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

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
        self.hangs = False
        self.checks = 0
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
        if self.cluster.hangs:
            await asyncio.Event().wait()
        if not self.cluster.up:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def check(self) -> None:
        self.cluster.checks += 1
        if self.cluster.hangs:
            await asyncio.Event().wait()
        if not self.cluster.up:
            raise KafkaConnectionError("Unable to get cluster metadata over all known brokers")

    async def publish(self, message: OutgoingMessage) -> None:
        if self.cluster.too_large:
            raise MessageSizeTooLargeError()
        if not self.cluster.up:
            raise KafkaTimeoutError()
        self.published.append(message)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await holds(condition):
            await asyncio.sleep(0.005)


async def holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    answer = condition()
    return await answer if inspect.isawaitable(answer) else answer


async def connect(cluster: Cluster, publisher: ReconnectingPublisher) -> None:
    """Start the publisher with Kafka up, and wait until it is ready."""
    cluster.up = True
    await publisher.start()
    await eventually(publisher.is_ready)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def publisher(cluster: Cluster) -> ReconnectingPublisher:
    return ReconnectingPublisher(
        # A stand-in for KafkaPublisher: its methods, not its class.
        cluster.connect,  # type: ignore[arg-type]
        first_retry_delay=0.01,
        max_retry_delay=0.02,
        confirm_after=0.05,
        confirm_timeout=0.1,
    )


async def test_starts_without_kafka_and_connects_when_it_comes(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await publisher.start()
    await eventually(lambda: len(cluster.producers) >= 3)

    assert not await publisher.is_ready()
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
    await connect(cluster, publisher)
    connected = cluster.producers[0]

    cluster.up = False
    with pytest.raises(KafkaTimeoutError):
        await publisher.publish(MESSAGE)
    assert not await publisher.is_ready()
    await asyncio.sleep(0.05)
    assert not await publisher.is_ready()
    # Not handed to the producer, which would hold it for the whole publish timeout.
    with pytest.raises(KafkaUnavailableError):
        await publisher.publish(MESSAGE)

    cluster.up = True
    await eventually(publisher.is_ready)
    await publisher.publish(MESSAGE)
    await publisher.stop()

    assert connected.published == [MESSAGE]
    assert all(probe.stopped for probe in cluster.producers[1:])


async def test_a_publish_cancelled_by_a_timeout_counts_as_a_failure(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)

    async def never(message: OutgoingMessage) -> None:
        await asyncio.Event().wait()

    # A publish that never returns, in place of the stand-in's.
    cluster.producers[0].publish = never  # type: ignore[method-assign]
    cluster.up = False
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await publisher.publish(MESSAGE)

    assert not await publisher.is_ready()
    await publisher.stop()


async def test_a_message_too_large_says_nothing_about_kafka(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)
    cluster.too_large = True

    with pytest.raises(MessageSizeTooLargeError):
        await publisher.publish(MESSAGE)

    assert await publisher.is_ready()
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
    assert not await publisher.is_ready()


async def test_kafka_gone_while_idle_is_noticed_by_the_probe_and_recovered_from(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)
    connecting = len(cluster.producers)

    cluster.up = False
    await eventually(lambda: not_ready(publisher))
    await asyncio.sleep(0.05)
    retried = len(cluster.producers) > connecting

    cluster.up = True
    await eventually(publisher.is_ready)
    await publisher.stop()

    assert retried, "a failed check starts the recovery"


async def not_ready(publisher: ReconnectingPublisher) -> bool:
    return not await publisher.is_ready()


async def test_probes_ask_kafka_only_once_contact_is_not_recent(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)
    await asyncio.sleep(0.06)

    answers = [await publisher.is_ready() for _ in range(5)]
    checked_once = cluster.checks
    await publisher.publish(MESSAGE)
    after_publish = await publisher.is_ready()
    await publisher.stop()

    assert answers == [True] * 5
    assert checked_once == 1, "one check is good for a while"
    assert after_publish
    assert cluster.checks == 1, "a successful publish is contact enough"


async def test_concurrent_probes_share_one_check_and_a_hung_one_is_bounded(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)
    await asyncio.sleep(0.06)
    cluster.hangs = True

    async with asyncio.timeout(1):
        answers = await asyncio.gather(*(publisher.is_ready() for _ in range(3)))
    await publisher.stop()

    assert answers == [False] * 3
    assert cluster.checks == 1


async def test_a_probe_that_gives_up_leaves_the_check_to_finish(
    cluster: Cluster, publisher: ReconnectingPublisher
) -> None:
    await connect(cluster, publisher)
    await asyncio.sleep(0.06)
    cluster.up = False

    probe = asyncio.create_task(publisher.is_ready())
    await asyncio.sleep(0)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    answer = await publisher.is_ready()
    await publisher.stop()

    assert not answer
    assert cluster.checks == 1, "the next probe got the first check's answer"
