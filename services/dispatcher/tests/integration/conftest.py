"""A dispatcher on a real PostgreSQL schema, with the external service behind MockTransport."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from webhook_tasks_contracts import (
    REVEAL_SECRETS,
    CallbackKey,
    CallbackTokens,
    TaskMetadata,
    TaskRequested,
    Topics,
)
from webhook_tasks_dispatcher.client import WebhookClient
from webhook_tasks_dispatcher.guard import UrlGuard
from webhook_tasks_dispatcher.retry import RetryPolicy
from webhook_tasks_dispatcher.sealing import RequestSealer
from webhook_tasks_dispatcher.service import Dispatcher
from webhook_tasks_dispatcher.settings import DispatcherSettings
from webhook_tasks_runtime.db import (
    Migration,
    create_pool,
    load_migrations,
    migrate,
    runtime_migrations,
)
from webhook_tasks_runtime.infra import Infrastructure


async def resolve_publicly(host: str, port: int) -> list[str]:
    """Resolve every name to a public documentation-range address (no DNS in tests)."""
    return ["93.184.216.34"]


KEYS = [CallbackKey("test", b"k" * 32)]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        # From the real time: a callback a test makes is stamped by the real clock, and is on
        # time for a deadline this clock sets unless the test stamps it otherwise.
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class ExternalService:
    """Answers like a real external service would; records what it received."""

    answer: Callable[[httpx.Request], httpx.Response] = lambda request: httpx.Response(
        200, json={"status": "accepted", "estimatedCompletion": "20s"}
    )
    received: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        return self.answer(request)


@dataclass
class DispatcherUnderTest:
    dispatcher: Dispatcher
    pool: asyncpg.Pool
    clock: FakeClock
    service: ExternalService
    topics: Topics
    tokens: CallbackTokens
    webhooks: WebhookClient

    def another(self, **overrides: Any) -> Dispatcher:
        """Return a dispatcher on the same database, service and clock, with `overrides`."""
        parts: dict[str, Any] = {
            "pool": self.pool,
            "webhooks": self.webhooks,
            "tokens": self.tokens,
            "callback_base_url": "https://gateway.example.com",
            "topics": self.topics,
            "after_commit": lambda: None,
            "dispatch_lease": timedelta(seconds=60),
            "clock": self.clock,
            "retry": RetryPolicy(rng=random.Random(4)),
            "sealer": RequestSealer(KEYS),
        }
        return Dispatcher(**(parts | overrides))

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(row["topic"], row["key"], bytes(row["payload"])) for row in rows]


class HeldService:
    """An external service that answers each request only once the test lets it.

    The first `failing` requests are answered 503 at once instead. The answer is `body`
    (an acknowledgement; a sync task's result when given one).
    """

    def __init__(self, *, failing: int = 0, body: dict[str, Any] | None = None) -> None:
        self.arrived: list[str] = []
        self.answer = asyncio.Event()
        self._failing = failing
        self._body = body or {"status": "accepted"}
        self._arrivals = asyncio.Condition()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        async with self._arrivals:
            self.arrived.append(request.headers["webhook-id"])
            self._arrivals.notify_all()
        if len(self.arrived) <= self._failing:
            return httpx.Response(503, text="busy")
        await self.answer.wait()
        return httpx.Response(202, json=self._body)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10), self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.arrived) >= count)


def with_service(
    under_test: DispatcherUnderTest, service: HeldService, **overrides: object
) -> Dispatcher:
    """Return a dispatcher like `under_test`'s whose external service is `service`."""
    http = httpx.MockTransport(service)
    webhooks = WebhookClient(http, guard=UrlGuard(resolve=resolve_publicly))
    return under_test.another(webhooks=webhooks, **overrides)


MIGRATIONS = runtime_migrations() + load_migrations("webhook_tasks_dispatcher")
"""Every migration of the dispatcher's schema, in order."""


def migrations_through(name: str) -> list[Migration]:
    """Return the migrations up to and including `name`."""
    names = [migration.name for migration in MIGRATIONS]
    return MIGRATIONS[: names.index(name) + 1]


@pytest.fixture
async def pool(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=20)
    await migrate(pool, unique_schema, MIGRATIONS)
    try:
        yield pool
    finally:
        await pool.execute(f'DROP SCHEMA "{unique_schema}" CASCADE')
        await pool.close()


@pytest.fixture
async def schema_before(
    infrastructure: Infrastructure, unique_schema: str
) -> AsyncIterator[Callable[[str], Awaitable[asyncpg.Pool]]]:
    """Return a function giving a pool on a schema migrated up to, not including, a migration."""
    schema = f"{unique_schema}_upgrade"
    pools: list[asyncpg.Pool] = []

    async def migrated_before(name: str) -> asyncpg.Pool:
        pool = await create_pool(infrastructure.database_url, schema, max_size=4)
        pools.append(pool)
        await migrate(pool, schema, migrations_through(name)[:-1])
        return pool

    yield migrated_before
    for pool in pools:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()


@pytest.fixture
async def under_test(
    pool: asyncpg.Pool, unique_topics: Topics
) -> AsyncIterator[DispatcherUnderTest]:
    clock = FakeClock()
    service = ExternalService()
    tokens = CallbackTokens(KEYS)
    http = httpx.MockTransport(service)
    webhooks = WebhookClient(http, guard=UrlGuard(resolve=resolve_publicly))
    dispatcher = Dispatcher(
        pool=pool,
        webhooks=webhooks,
        tokens=tokens,
        callback_base_url="https://gateway.example.com",
        topics=unique_topics,
        after_commit=lambda: None,
        dispatch_lease=timedelta(seconds=60),
        clock=clock,
        retry=RetryPolicy(rng=random.Random(4)),
        sealer=RequestSealer(KEYS),
    )
    try:
        yield DispatcherUnderTest(dispatcher, pool, clock, service, unique_topics, tokens, webhooks)
    finally:
        await http.aclose()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class LocalServer:
    """An aiohttp server on 127.0.0.1 whose routes a test sets."""

    url: str
    routes: dict[str, Handler] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    holder: dict[str, LocalServer] = {}

    async def dispatch(request: web.Request) -> web.StreamResponse:
        local = holder["server"]
        local.received.append((request.path, dict(request.headers), await request.read()))
        local.in_flight += 1
        local.most_in_flight = max(local.most_in_flight, local.in_flight)
        try:
            return await local.routes[request.path](request)
        finally:
            local.in_flight -= 1

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    # A started site has a server; aiohttp types it as optional.
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    holder["server"] = LocalServer(f"http://127.0.0.1:{port}")
    try:
        yield holder["server"]
    finally:
        await runner.cleanup()


# The first consumer-group join on the embedded broker takes seconds; waits end early.
GENEROUS_WAIT = 90.0


def settings_for(
    infrastructure: Infrastructure, schema: str, topics: Topics, **overrides: Any
) -> DispatcherSettings:
    """Return settings for the real service on the test infrastructure, with `overrides`."""
    defaults: dict[str, Any] = {
        "kafka_bootstrap_servers": infrastructure.kafka_bootstrap_servers,
        "kafka_enable_idempotence": infrastructure.supports_idempotent_producer,
        "outbound_allowlist": "127.0.0.1/32",
        "retry_schedule": "0.3",
        "retry_max_attempts": 100,
        "circuit_failure_threshold": 1000,
        "request_timeout_seconds": 5,
        "sender_poll_interval": 0.1,
        "log_level": "DEBUG",
    }
    return DispatcherSettings(
        database_url=infrastructure.database_url,
        database_schema=schema,
        topic_prefix=topics.prefix,
        callback_token_keys=f"t:base64:{base64.b64encode(os.urandom(32)).decode()}",
        public_callback_base_url="http://gateway.invalid",
        environment="test",
        **(defaults | overrides),
    )


async def wait_until(
    pool: asyncpg.Pool, query: str, accept: Callable[[Any], bool], service: asyncio.Task[None]
) -> None:
    """Wait until `query`'s value is accepted, failing if the service stops first."""
    async with asyncio.timeout(GENEROUS_WAIT):
        while True:
            assert not service.done(), "the dispatcher stopped"
            try:
                value = await pool.fetchval(query)
            except asyncpg.UndefinedTableError:
                value = None  # not migrated yet
            if value is not None and accept(value):
                return
            await asyncio.sleep(0.1)


async def accept(request: web.Request) -> web.StreamResponse:
    """Acknowledge a request at once, as an external service that took the job."""
    return web.json_response({"status": "accepted"})


def webhook_task(url: str, *, prefix: str, **metadata: object) -> TaskRequested:
    """Return a task event for a webhook task sent to `url`, its id starting with `prefix`."""
    return TaskRequested(
        task_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        user_id="user-1",
        project_id="project-1",
        prompt="render",
        task_metadata=TaskMetadata.model_validate(
            {"isWebhookTask": True, "webhookUrl": url, **metadata}
        ),
    )


async def publish_task(producer: AIOKafkaProducer, topics: Topics, request: TaskRequested) -> None:
    """Publish `request` as an upstream system does: webhookAuth in clear, keyed by task id."""
    await producer.send_and_wait(
        topics.task_requested,
        request.model_dump_json(context={REVEAL_SECRETS: True}).encode(),
        key=request.task_id.encode(),
    )
