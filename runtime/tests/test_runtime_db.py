"""The pool and migrations: bounded waits, and a role that owns its schema but not the database."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from webhook_tasks_runtime.db import (
    DATABASE_AWAY,
    Migration,
    create_pool,
    migrate,
    retry_while_database_away,
)
from webhook_tasks_runtime.infra import Infrastructure

MIGRATIONS = [Migration("test/0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")]


def as_role(database_url: str, role: str, password: str) -> str:
    """Return `database_url` with `role` and `password` in place of its user."""
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@pytest.mark.integration
async def test_a_role_owning_a_schema_made_for_it_migrates_without_create_on_the_database(
    infrastructure: Infrastructure, unique_schema: str
) -> None:
    # As on a managed PostgreSQL: the DBA creates the schema for the services' role, which
    # is not the database's owner and has no CREATE on it.
    role, password = f"svc_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    admin = await asyncpg.connect(infrastructure.database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f'CREATE SCHEMA "{unique_schema}" AUTHORIZATION {role}')
        database = await admin.fetchval("SELECT current_database()")
        assert not await admin.fetchval(
            "SELECT has_database_privilege($1, $2, 'CREATE')", role, database
        )
        pool = await create_pool(
            as_role(infrastructure.database_url, role, password), unique_schema
        )
        try:
            first = await migrate(pool, unique_schema, MIGRATIONS)
            again = await migrate(pool, unique_schema, MIGRATIONS)
            await pool.execute("INSERT INTO things (id) VALUES (1)")
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{unique_schema}" CASCADE')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()

    assert first == ["test/0001_things.sql"]
    assert again == []


@pytest.mark.integration
async def test_a_statement_unanswered_within_the_timeout_fails_and_frees_its_connection(
    infrastructure: Infrastructure, unique_schema: str
) -> None:
    # As a server that hangs: the work fails as while PostgreSQL is away, in bounded time.
    pool = await create_pool(
        infrastructure.database_url, unique_schema, max_size=1, statement_timeout=0.5
    )
    try:
        started = time.monotonic()
        with pytest.raises(DATABASE_AWAY):
            await pool.execute("SELECT pg_sleep(30)")
        waited = time.monotonic() - started

        answer = await pool.fetchval("SELECT 1")
    finally:
        await pool.close()

    assert waited < 10
    assert answer == 1


@pytest.mark.integration
async def test_a_migration_may_run_longer_than_a_statement_may(
    infrastructure: Infrastructure, unique_schema: str
) -> None:
    slow = Migration("test/0001_slow.sql", "SELECT pg_sleep(1.5); CREATE TABLE things (id int);")
    pool = await create_pool(infrastructure.database_url, unique_schema, statement_timeout=0.5)
    try:
        applied = await migrate(pool, unique_schema, [slow])
        await pool.execute("INSERT INTO things (id) VALUES (1)")
    finally:
        await pool.execute(f'DROP SCHEMA "{unique_schema}" CASCADE')
        await pool.close()

    assert applied == ["test/0001_slow.sql"]


async def test_a_record_is_written_again_while_postgresql_is_away_then_kept() -> None:
    tries: list[int] = []

    async def write() -> str:
        tries.append(len(tries))
        if len(tries) == 1:
            raise ConnectionRefusedError(111, "Connect call failed")
        if len(tries) == 2:
            # A failover's standby, still answering at the primary's address.
            raise asyncpg.ReadOnlySQLTransactionError("read-only transaction")
        return "recorded"

    result = await retry_while_database_away(
        write, give_up_at=time.monotonic() + 10, what="recording"
    )

    assert result == "recorded"
    assert len(tries) == 3


async def test_a_record_that_is_wrong_is_not_tried_again() -> None:
    tries = 0

    async def write() -> None:
        nonlocal tries
        tries += 1
        raise asyncpg.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.UniqueViolationError):
        await retry_while_database_away(write, give_up_at=time.monotonic() + 10, what="recording")
    assert tries == 1


async def test_the_tries_end_at_the_given_time_with_the_last_error() -> None:
    async def write() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await retry_while_database_away(write, give_up_at=started + 1.0, what="recording")
    assert time.monotonic() - started <= 1.0


async def test_a_retry_that_hangs_is_given_up_at_the_given_time() -> None:
    # Past it, the claim the record is for may be another process's.
    tries = 0

    async def write() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionRefusedError(111, "Connect call failed")
        await asyncio.sleep(30)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await retry_while_database_away(write, give_up_at=started + 1.0, what="recording")
    assert time.monotonic() - started < 5


async def test_the_first_try_is_made_in_full_however_late() -> None:
    # A request answered after half its claim (a long sync answer) is still recorded.
    async def write() -> str:
        await asyncio.sleep(0.2)
        return "recorded"

    late = time.monotonic() - 60

    assert await retry_while_database_away(write, give_up_at=late, what="recording") == "recorded"


async def test_a_record_tried_again_and_again_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries = 0

    async def write() -> None:
        nonlocal tries
        tries += 1
        if tries < 4:
            raise ConnectionRefusedError(111, "Connect call failed")

    caplog.set_level(logging.WARNING, logger="webhook_tasks_runtime.db")
    await retry_while_database_away(
        write, give_up_at=time.monotonic() + 30, what="recording the answer"
    )

    assert tries == 4
    assert [r.getMessage() for r in caplog.records] == ["recording the answer failed; retrying"]
