"""Fixtures the runtime's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from webhook_tasks_runtime.infra import Infrastructure


@pytest.fixture
async def database(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[str]:
    """Yield the database URL; drop the test's schema afterwards."""
    yield infrastructure.database_url
    conn = await asyncpg.connect(infrastructure.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{unique_schema}" CASCADE')
    finally:
        await conn.close()
