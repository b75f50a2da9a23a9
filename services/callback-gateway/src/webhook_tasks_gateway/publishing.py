"""Publish to Kafka from a process that must start, and stay up, while Kafka is away.

aiokafka's `producer.start()` raises when no broker answers, so the producer is
started in the background, retried with backoff, and replaced by nothing until
then: publishing fails fast (the gateway answers 503) and the readiness probe
says not ready. After a failed publish the probe says not ready until a publish
succeeds or a throwaway connection shows that the cluster answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

from aiokafka.errors import MessageSizeTooLargeError
from webhook_tasks_runtime.kafka import KafkaPublisher, OutgoingMessage

logger = logging.getLogger(__name__)


class CallbackPublisher(Protocol):
    """Produce one message durably (acks=all); return only once it is acknowledged."""

    async def publish(self, message: OutgoingMessage) -> None: ...


@runtime_checkable
class ReadinessProbe(Protocol):
    """Answer whether the process can do its work right now (GET /readyz)."""

    def is_ready(self) -> bool: ...


class AlwaysReady:
    """A probe for publishers that need no connection."""

    def is_ready(self) -> bool:
        """Return True."""
        return True


class KafkaUnavailableError(RuntimeError):
    """No connection to Kafka has been established yet."""


class ReconnectingPublisher:
    """A CallbackPublisher and ReadinessProbe over a KafkaPublisher started in the background."""

    def __init__(
        self,
        connect: Callable[[], KafkaPublisher],
        *,
        first_retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
        attempt_timeout: float = 15.0,
    ) -> None:
        self._connect = connect
        self._first_retry_delay = first_retry_delay
        self._max_retry_delay = max_retry_delay
        self._attempt_timeout = attempt_timeout
        self._publisher: KafkaPublisher | None = None
        self._healthy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin connecting in the background; return at once."""
        self._spawn(self._open(), "kafka-connect")

    async def stop(self) -> None:
        """Stop connecting, then flush and close the producer."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        publisher, self._publisher = self._publisher, None
        self._healthy = False
        if publisher is not None:
            await publisher.stop()

    def is_ready(self) -> bool:
        """Return whether Kafka is connected and the last publish (if any) succeeded."""
        return self._publisher is not None and self._healthy

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish through the connected producer; fail at once if there is none yet."""
        publisher = self._publisher
        if publisher is None:
            raise KafkaUnavailableError("not connected to Kafka yet")
        try:
            await publisher.publish(message)
        except MessageSizeTooLargeError:
            raise
        except BaseException:
            # Cancellation included: the caller's timeout expired, so Kafka is not keeping up.
            self._note_failure()
            raise
        self._healthy = True

    async def _open(self) -> None:
        self._publisher = await self._connected_publisher()
        self._healthy = True
        logger.info("connected to Kafka")

    async def _recover(self) -> None:
        probe = await self._connected_publisher()
        await probe.stop()
        self._healthy = True
        logger.info("Kafka answers again")

    def _note_failure(self) -> None:
        if self._healthy:
            logger.warning("publishing to Kafka failed; not ready until it answers")
        self._healthy = False
        if self._recovering is None or self._recovering.done():
            self._recovering = self._spawn(self._recover(), "kafka-recover")

    async def _connected_publisher(self) -> KafkaPublisher:
        delay = self._first_retry_delay
        while True:
            publisher = self._connect()
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation that races a failure.
                async with asyncio.timeout(self._attempt_timeout):
                    await publisher.start()
            except BaseException as error:
                with contextlib.suppress(Exception):
                    await publisher.stop()
                if not isinstance(error, Exception):
                    raise
                _raise_if_cancelling()
                logger.warning(
                    "Kafka is not reachable; retrying",
                    extra={"error": str(error) or type(error).__name__, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
            else:
                return publisher

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _raise_if_cancelling() -> None:
    # A library that turns our cancellation into its own error must not keep us retrying.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
