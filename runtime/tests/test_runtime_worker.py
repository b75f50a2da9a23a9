"""A worker starts and stops in order: whatever started is stopped, Kafka being away at shutdown
neither loses outbox rows nor outlasts Kubernetes' grace period, and no error shows the password."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from faststream.kafka import KafkaBroker
from pydantic import SecretStr, TypeAdapter
from webhook_tasks_contracts import Topics
from webhook_tasks_runtime import worker
from webhook_tasks_runtime.db import Migration
from webhook_tasks_runtime.embedded import EmbeddedKafka, free_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ConsumerSpec, OutgoingMessage, ensure_topics
from webhook_tasks_runtime.outbox import add_to_outbox
from webhook_tasks_runtime.settings import DatabaseSettings
from webhook_tasks_runtime.worker import WorkerParts, WorkerResources, serve_worker

KUBERNETES_GRACE_SECONDS = 30


def worker_settings(
    database_url: str, schema: str, bootstrap: str, topics: Topics, **overrides: Any
) -> DatabaseSettings:
    return DatabaseSettings(
        database_url=database_url,
        database_schema=schema,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=False,
        kafka_fetch_max_wait_ms=20,
        topic_prefix=topics.prefix,
        environment="test",
        **overrides,
    )


def one_consumer(topics: Topics) -> ConsumerSpec[Any]:
    async def ignore(_event: object) -> None:
        return None

    return ConsumerSpec(
        "worker-test",
        topics.task_requested,
        f"{topics.prefix}.worker-test",
        TypeAdapter(dict),
        ignore,
    )


async def wait_until(condition: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def rows_in_outbox(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(f'SELECT count(*) FROM "{schema}".outbox')  # noqa: S608
    finally:
        await conn.close()
    return count


@pytest.mark.integration
async def test_shutdown_while_kafka_is_away_is_quick_and_leaves_the_rows_in_the_outbox(
    database: str,
    unique_schema: str,
    unique_topics: Topics,
    private_kafka: EmbeddedKafka,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = private_kafka.bootstrap_servers
    lifecycle = unique_topics.task_lifecycle
    await ensure_topics(bootstrap, [unique_topics.task_requested, lifecycle])
    settings = worker_settings(database, unique_schema, bootstrap, unique_topics)
    built: asyncio.Queue[WorkerResources] = asyncio.Queue()

    async def build(resources: WorkerResources) -> WorkerParts:
        await built.put(resources)
        return WorkerParts(consumers=[one_consumer(unique_topics)])

    async def started() -> bool:
        return any(record.getMessage() == "service started" for record in caplog.records)

    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="webhook_tasks_runtime"):
        service = asyncio.create_task(
            serve_worker(name="test", settings=settings, migrations=[], build=build, stop=stop)
        )
        resources = await asyncio.wait_for(built.get(), 60)
        relay = resources.relay
        await wait_until(started)
        async with resources.pool.acquire() as conn:
            await add_to_outbox(conn, [OutgoingMessage(lifecycle, "k", b"while Kafka is up")])
        relay.wake()
        await wait_until(lambda: relay_is_empty(relay))

        await asyncio.to_thread(private_kafka.stop)
        async with resources.pool.acquire() as conn:
            await add_to_outbox(
                conn, [OutgoingMessage(lifecycle, "k", b"%d" % n) for n in range(3)]
            )
        relay.wake()
        await asyncio.sleep(1)  # the relay is trying to publish them
        stopping = time.monotonic()
        stop.set()
        await asyncio.wait_for(service, KUBERNETES_GRACE_SECONDS)  # raises what serve raised
        took = time.monotonic() - stopping

    assert took < KUBERNETES_GRACE_SECONDS / 2
    assert await rows_in_outbox(database, unique_schema) == 3, "nothing is lost"
    warnings = [
        record
        for record in caplog.records
        if record.name == "webhook_tasks_runtime.worker" and record.levelno >= logging.WARNING
    ]
    assert [record.getMessage() for record in warnings] == [
        "outbox not drained at shutdown; its rows are published after the next start"
    ]
    # A field the log call gave as `extra`.
    assert warnings[0].rows == 3  # type: ignore[attr-defined]


async def relay_is_empty(relay: Any) -> bool:
    return bool(await relay.waiting() == 0)


@pytest.mark.integration
async def test_a_start_that_fails_halfway_stops_what_it_started(
    database: str,
    unique_schema: str,
    unique_topics: Topics,
    infrastructure: Infrastructure,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.task_requested])
    cancelled = asyncio.Event()

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def build(resources: WorkerResources) -> WorkerParts:
        return WorkerParts(consumers=[one_consumer(unique_topics)], background=[background])

    async def refused(_broker: KafkaBroker) -> None:
        raise OSError("the consumers could not start")

    # The last step of the start fails: the relay and the loops already run.
    monkeypatch.setattr(KafkaBroker, "start", refused)
    settings = worker_settings(database, unique_schema, bootstrap, unique_topics)
    before = asyncio.all_tasks()
    with pytest.raises(OSError, match="could not start"):
        await serve_worker(
            name="test", settings=settings, migrations=[], build=build, stop=asyncio.Event()
        )

    assert cancelled.is_set()
    left = [task for task in asyncio.all_tasks() - before if not task.done()]
    assert left == [], "the relay, the loops and the consumers are stopped"


@pytest.mark.integration
async def test_healthz_answers_during_a_long_migration_and_readyz_once_consuming(
    database: str, unique_schema: str, unique_topics: Topics, infrastructure: Infrastructure
) -> None:
    # A liveness probe that got no answer while migrations ran would kill the pod, and the
    # next start would begin the migration again.
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.task_requested])
    port = free_port()
    settings = worker_settings(
        database, unique_schema, bootstrap, unique_topics, health_host="127.0.0.1", health_port=port
    )
    slow = Migration("test/0001_slow.sql", "SELECT pg_sleep(3);")

    async def build(_resources: WorkerResources) -> WorkerParts:
        return WorkerParts(consumers=[one_consumer(unique_topics)])

    async def status(path: str) -> int | None:
        try:
            async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
                return (await client.get(f"http://127.0.0.1:{port}{path}")).status_code
        except httpx.TransportError:
            return None

    stop = asyncio.Event()
    service = asyncio.create_task(
        serve_worker(name="test", settings=settings, migrations=[slow], build=build, stop=stop)
    )
    try:
        await wait_until(lambda: _answers(status("/healthz")), within=10)
        migrating = await rows_applied(database, unique_schema) == 0
        during = (await status("/healthz"), await status("/readyz"))
        await wait_until(lambda: _is(status("/readyz"), 200), within=60)
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)

    assert migrating, "the probes were asked while the migration ran"
    assert during == (200, 503)


async def _answers(status: Awaitable[int | None]) -> bool:
    return await status is not None


async def _is(status: Awaitable[int | None], expected: int) -> bool:
    return await status == expected


async def rows_applied(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations")
        if exists is None:
            return 0
        count: int = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".schema_migrations'  # noqa: S608
        )
    finally:
        await conn.close()
    return count


SECRET = "Zk3q9Lm"


async def serve_with_url(url: str) -> BaseException:
    # model_construct: past the settings' own check, as a caller of serve_worker might be.
    settings = DatabaseSettings.model_construct(
        database_url=SecretStr(url), database_schema="expirer", kafka_bootstrap_servers="k:9092"
    )

    async def build(_resources: WorkerResources) -> WorkerParts:
        raise AssertionError("no pool, no build")

    try:
        await serve_worker(
            name="test", settings=settings, migrations=[], build=build, stop=asyncio.Event()
        )
    except Exception as error:
        return error
    raise AssertionError("serve_worker started")


def printed(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


async def test_an_unreadable_url_fails_without_printing_the_password() -> None:
    error = await serve_with_url("postgresql://expirer:Zk3/q9#Lm@db.internal:5432/tasks")

    assert "DATABASE_URL" in str(error)
    for part in ("Zk3", "q9", "Lm"):
        assert part not in printed(error)


async def test_a_pool_error_quoting_the_password_is_not_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def quoting(url: str, *_args: object, **_kwargs: object) -> None:
        raise ConnectionError(f"could not connect to {url}")

    monkeypatch.setattr(worker, "create_pool", quoting)

    error = await serve_with_url(f"postgresql://expirer:{SECRET}@db.internal/tasks")

    assert SECRET not in printed(error)
    assert "ConnectionError" in str(error)


async def test_a_pool_error_without_the_password_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(*_args: object, **_kwargs: object) -> None:
        raise ConnectionRefusedError("connection refused: db.internal:5432")

    monkeypatch.setattr(worker, "create_pool", refused)

    error = await serve_with_url(f"postgresql://expirer:{SECRET}@db.internal/tasks")

    assert isinstance(error, ConnectionRefusedError)


def test_a_service_runs_with_its_start_up_heap_frozen_and_fewer_young_collections() -> None:
    seen: dict[str, int] = {}

    async def service(stop: asyncio.Event) -> None:
        seen["young_threshold"] = gc.get_threshold()[0]
        seen["frozen"] = gc.get_freeze_count()

    before = gc.get_threshold()
    try:
        worker.run_until_signalled(service)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

    assert seen["young_threshold"] == worker.YOUNG_COLLECTION_THRESHOLD > before[0]
    assert seen["frozen"] > 10_000, "what start-up loaded is out of the collector's way"
