"""Run a Kafka worker service: resources opened at start, closed in reverse on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import urllib.parse
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

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations (less deallocations) of container objects between collections of the youngest
generation; CPython's default is 700."""
FINAL_FLUSH_SECONDS = 5.0
"""How long shutdown may spend publishing what is left in the outbox."""
KAFKA_REQUEST_TIMEOUT_MS = 10_000
"""Longest wait for Kafka to acknowledge a record (aiokafka's default: 40 s). While Kafka is away
records wait this long in the producer, and stopping the producer waits for them."""


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
    """Open resources, migrate, consume until `stop` is set, then shut down in order.

    Whatever was started is stopped, also when a later step of the start fails.
    """
    schema = settings.database_schema
    started = False
    database_answers: Callable[[], Awaitable[bool]] | None = None

    async def ready() -> bool:
        return started and database_answers is not None and await database_answers()

    async with AsyncExitStack() as stack:
        if settings.health_port is not None:
            # First, so /healthz answers while a long migration runs (a liveness probe would
            # otherwise kill it, and the next start would begin it again); /readyz says ready
            # once consuming. Stopped last: probes answer till the end.
            health = HealthServer(host=settings.health_host, port=settings.health_port, ready=ready)
            await health.start()
            stack.push_async_callback(health.stop)
        pool = await _open_pool(settings)
        stack.push_async_callback(pool.close)
        database_answers = _database_answers(pool)
        await migrate(pool, schema, runtime_migrations() + migrations)

        publisher = KafkaPublisher.create(
            settings.kafka_bootstrap_servers,
            enable_idempotence=settings.kafka_enable_idempotence,
            client_id=f"webhook-tasks-{name}",
            max_request_size=settings.kafka_max_message_bytes,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
            **settings.kafka_client_options(),
        )
        await publisher.start()
        stack.push_async_callback(publisher.stop)

        relay = OutboxRelay(
            pool, publisher, schema=schema, lock_wait_step=settings.database_timeout_seconds / 2
        )
        resources = WorkerResources(settings, pool, publisher, relay, stack)
        parts = await build(resources)

        broker: KafkaBroker = create_broker(
            settings.kafka_bootstrap_servers,
            client_id=f"webhook-tasks-{name}",
            security=settings.kafka_broker_security(),
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
        tasks: list[asyncio.Task[None]] = []
        # Run last to first, each even if one before failed: stop consuming (in-flight batches
        # finish), stop the relay and the loops, then publish what the outbox still holds.
        stack.push_async_callback(_drain_outbox, relay)
        stack.push_async_callback(_cancel, tasks)
        stack.push_async_callback(broker.stop)

        def stopping() -> None:
            nonlocal started
            started = False  # not ready any more: in-flight work finishes, nothing new comes
            logger.info("service stopping")

        stack.callback(stopping)

        tasks.append(asyncio.create_task(relay.run(), name=f"{name}-outbox-relay"))
        tasks += [
            asyncio.create_task(loop(), name=f"{name}-{loop.__name__}") for loop in parts.background
        ]
        await broker.start()
        started = True
        logger.info("service started", extra={"schema": schema})
        await _wait_for_stop_or_failure(stop, tasks)
    logger.info("service stopped")


async def _open_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    url = settings.database_url.get_secret_value()
    try:
        return await create_pool(
            url,
            settings.database_schema,
            max_size=settings.database_pool_size,
            statement_timeout=settings.database_timeout_seconds,
        )
    except Exception as error:
        if not _may_quote_password(error, url):
            raise
        # from None: the original, traceback and all, would print what this hides.
        raise RuntimeError(
            f"could not connect to PostgreSQL ({type(error).__name__}); the error's text is "
            "withheld as it may quote DATABASE_URL's password"
        ) from None


def _may_quote_password(error: Exception, url: str) -> bool:
    if isinstance(error, ValueError):
        return True  # asyncpg could not read the URL, and quotes the part it could not
    password = urllib.parse.urlparse(url).password or ""
    text = str(error)
    return bool(password) and (password in text or urllib.parse.unquote(password) in text)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _drain_outbox(relay: OutboxRelay) -> None:
    try:
        # Kubernetes kills the pod 30 s after SIGTERM, and Kafka may be away: rows that do not
        # go now stay in the outbox and are published after the next start.
        async with asyncio.timeout(FINAL_FLUSH_SECONDS):
            await relay.flush()
    except Exception as error:
        logger.warning(
            "outbox not drained at shutdown; its rows are published after the next start",
            extra={"rows": await _rows_waiting(relay), "error": str(error) or type(error).__name__},
        )


async def _rows_waiting(relay: OutboxRelay) -> int | None:
    try:
        async with asyncio.timeout(2):
            return await relay.waiting()
    except Exception:
        return None  # PostgreSQL is away too: the count is unknown, the rows are still there


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


def settle_heap() -> None:
    """Freeze what start-up loaded, and collect young objects less often."""
    # What is loaded by now (modules, validators, settings) lives as long as the process.
    # Frozen, it is left out of every full collection: unfrozen, each one walked ~90,000
    # objects and held the event loop ~50 ms (every few seconds under load), which set the
    # gateway's p99. Under load almost every object dies young, by reference count; with
    # the default threshold the collector still ran over 100 times a second in the dispatcher
    # and took ~9% of its CPU, ~3% of the gateway's. With this one it ran less than once a
    # second and took <1%. Cycles live a little longer: a few MB at most.
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` in a new event loop, the heap settled; SIGTERM and SIGINT set `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    settle_heap()
    try:
        import uvloop
    except ImportError:
        asyncio.run(runner())
        return
    # The services spend much of their time in socket reads and writes; uvloop's are far
    # cheaper than the default loop's (measured in bench/).
    uvloop.run(runner())
