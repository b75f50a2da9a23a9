"""Run a Kafka worker service: resources opened at start, closed in reverse on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from faststream.kafka import KafkaBroker

from .db import Migration, create_pool, migrate, runtime_migrations
from .kafka import ConsumerSpec, KafkaPublisher, create_broker, register_consumer
from .observability import HealthServer
from .outbox import OutboxRelay
from .settings import DatabaseSettings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerResources:
    """What a worker's handlers are built from; created in the lifespan, never at import."""

    settings: DatabaseSettings
    pool: asyncpg.Pool
    publisher: KafkaPublisher
    relay: OutboxRelay
    exit_stack: AsyncExitStack


@dataclass(slots=True)
class WorkerParts:
    """The consumers and background loops a worker runs."""

    consumers: Sequence[ConsumerSpec[Any]]
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)


async def serve_worker(
    *,
    name: str,
    settings: DatabaseSettings,
    migrations: list[Migration],
    build: Callable[[WorkerResources], Awaitable[WorkerParts]],
    stop: asyncio.Event,
) -> None:
    """Open resources, migrate, consume until `stop` is set, then shut down in order."""
    schema = settings.database_schema
    async with AsyncExitStack() as stack:
        pool = await create_pool(
            settings.database_url.get_secret_value(), schema, max_size=settings.database_pool_size
        )
        stack.push_async_callback(pool.close)
        await migrate(pool, schema, runtime_migrations() + migrations)

        publisher = KafkaPublisher.create(
            settings.kafka_bootstrap_servers,
            enable_idempotence=settings.kafka_enable_idempotence,
            client_id=f"webhook-tasks-{name}",
        )
        await publisher.start()
        stack.push_async_callback(publisher.stop)

        relay = OutboxRelay(pool, publisher, schema=schema)
        resources = WorkerResources(settings, pool, publisher, relay, stack)
        parts = await build(resources)

        broker: KafkaBroker = create_broker(
            settings.kafka_bootstrap_servers, client_id=f"webhook-tasks-{name}"
        )
        for spec in parts.consumers:
            register_consumer(
                broker,
                spec,
                dead_letters=publisher,
                topics=settings.topics,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                poll_interval_ms=settings.kafka_poll_interval_ms,
            )

        tasks = [asyncio.create_task(relay.run(), name=f"{name}-outbox-relay")]
        tasks += [
            asyncio.create_task(loop(), name=f"{name}-{loop.__name__}") for loop in parts.background
        ]
        await broker.start()
        if settings.health_port is not None:
            health = HealthServer(
                host=settings.health_host, port=settings.health_port, ready=_database_answers(pool)
            )
            await health.start()
            stack.push_async_callback(health.stop)
        logger.info("service started", extra={"schema": schema})
        try:
            await _wait_for_stop_or_failure(stop, tasks)
        finally:
            logger.info("service stopping")
            # Stop consuming first (in-flight batches finish), then let the relay drain.
            await broker.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await relay.flush()
    logger.info("service stopped")


async def _wait_for_stop_or_failure(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            # A background loop died: stop the process so the orchestrator restarts it.
            raise RuntimeError(f"background task {task.get_name()} failed") from task.exception()


def _database_answers(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with asyncio.timeout(2):
            return bool(await pool.fetchval("SELECT true"))

    return check


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` in a new event loop; SIGTERM and SIGINT set `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(runner())
        return
    # The services spend much of their time in socket reads and writes; uvloop's are far
    # cheaper than the default loop's (measured in bench/).
    uvloop.run(runner())
