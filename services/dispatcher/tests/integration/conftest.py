"""A dispatcher on a real PostgreSQL schema, with the external service behind MockTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from webhook_tasks_contracts import CallbackKey, CallbackTokens, Topics
from webhook_tasks_dispatcher.client import WebhookClient
from webhook_tasks_dispatcher.service import Dispatcher
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.infra import Infrastructure


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

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

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(row["topic"], row["key"], bytes(row["payload"])) for row in rows]


@pytest.fixture
async def pool(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=20)
    await migrate(
        pool, unique_schema, runtime_migrations() + load_migrations("webhook_tasks_dispatcher")
    )
    try:
        yield pool
    finally:
        await pool.execute(f'DROP SCHEMA "{unique_schema}" CASCADE')
        await pool.close()


@pytest.fixture
async def under_test(
    pool: asyncpg.Pool, unique_topics: Topics
) -> AsyncIterator[DispatcherUnderTest]:
    clock = FakeClock()
    service = ExternalService()
    tokens = CallbackTokens([CallbackKey("test", b"k" * 32)])
    http = httpx.AsyncClient(transport=httpx.MockTransport(service))
    dispatcher = Dispatcher(
        pool=pool,
        webhooks=WebhookClient(http),
        tokens=tokens,
        callback_base_url="https://gateway.example.com",
        topics=unique_topics,
        after_commit=lambda: None,
        dispatch_lease=timedelta(seconds=60),
        clock=clock,
    )
    try:
        yield DispatcherUnderTest(dispatcher, pool, clock, service, unique_topics, tokens)
    finally:
        await http.aclose()
