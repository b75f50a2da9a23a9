"""A migrated expirer schema on the real PostgreSQL, and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.infra import Infrastructure


class FakeClock:
    """Return a time that moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def expirer_pool(
    infrastructure: Infrastructure, unique_schema: str
) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=8)
    try:
        await migrate(
            pool, unique_schema, runtime_migrations() + load_migrations("webhook_tasks_expirer")
        )
        yield pool
        await pool.execute(f'DROP SCHEMA "{unique_schema}" CASCADE')
    finally:
        await pool.close()
