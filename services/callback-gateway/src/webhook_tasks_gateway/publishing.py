"""Publish to Kafka from a process that must start, and stay up, while Kafka is away.

aiokafka's `producer.start()` raises when no broker answers, so the producer is
started in the background, retried with backoff, and replaced by nothing until
then: publishing fails fast (the gateway answers 503) and the readiness probe
says not ready; so it does again once a publish or a check has failed, until
Kafka answers. Once connected, the probe asks Kafka for its metadata (briefly
cached) when nothing has confirmed contact for a few seconds, so a cluster that
went away while no callback came is noticed all the same. After a failed publish
or check the probe says not ready until a publish succeeds or a throwaway
connection shows that the cluster answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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

    async def is_ready(self) -> bool: ...


class AlwaysReady:
    """A probe for publishers that need no connection."""

    async def is_ready(self) -> bool:
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
        confirm_after: float = 3.0,
        confirm_timeout: float = 2.0,
    ) -> None:
        self._connect = connect
        self._first_retry_delay = first_retry_delay
        self._max_retry_delay = max_retry_delay
        self._attempt_timeout = attempt_timeout
        self._confirm_after = confirm_after
        self._confirm_timeout = confirm_timeout
        self._publisher: KafkaPublisher | None = None
        self._healthy = False
        self._last_contact = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[None] | None = None

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

    async def is_ready(self) -> bool:
        """Return whether Kafka takes messages, asking it when nothing confirmed that lately."""
        publisher = self._publisher
        if publisher is None or not self._healthy:
            return False
        if time.monotonic() - self._last_contact < self._confirm_after:
            return True
        # One check at a time, whoever asks; a probe that gives up does not cancel it.
        if self._confirming is None or self._confirming.done():
            self._confirming = self._spawn(self._confirm(publisher), "kafka-confirm")
        await asyncio.wait([self._confirming])
        return self._publisher is not None and self._healthy

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish through the connected producer; fail at once if there is none yet."""
        publisher = self._publisher
        if publisher is None:
            raise KafkaUnavailableError("not connected to Kafka yet")
        if not self._healthy:
            # Until the recovery sees Kafka answer, fail at once: a callback held for the whole
            # publish timeout would tie up its connection and its body for nothing.
            raise KafkaUnavailableError("Kafka did not answer lately")
        try:
            await publisher.publish(message)
        except MessageSizeTooLargeError:
            raise
        except BaseException as error:
            # Cancellation included: the caller's timeout expired, so Kafka is not keeping up.
            self._note_failure("publish", error)
            raise
        self._note_contact()

    async def _open(self) -> None:
        self._publisher = await self._connected_publisher()
        self._note_contact()
        logger.info("connected to Kafka")

    async def _recover(self) -> None:
        probe = await self._connected_publisher()
        await probe.stop()
        self._note_contact()
        logger.info("Kafka answers again")

    async def _confirm(self, publisher: KafkaPublisher) -> None:
        try:
            async with asyncio.timeout(self._confirm_timeout):
                await publisher.check()
        except Exception as error:
            _raise_if_cancelling()
            self._note_failure("readiness check", error)
        else:
            self._note_contact()

    def _note_contact(self) -> None:
        self._healthy = True
        self._last_contact = time.monotonic()

    def _note_failure(self, during: str, error: BaseException) -> None:
        if self._healthy:
            logger.warning(
                "Kafka did not answer; not ready until it does",
                extra={"during": during, "error": _described(error)},
            )
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
                    extra={"error": _described(error), "retry_in_s": delay},
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


def _described(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _raise_if_cancelling() -> None:
    # A library that turns our cancellation into its own error must not keep us retrying.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
