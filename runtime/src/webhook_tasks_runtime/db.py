"""PostgreSQL: one pool per service, its own schema, migrations applied at start."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import asyncpg

from .backoff import RetryDelays

logger = logging.getLogger(__name__)

SCHEMA_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
"""A PostgreSQL schema name the services accept: lower case, safe to quote into DDL."""
_SCHEMA_NAME = re.compile(SCHEMA_NAME_PATTERN)

DATABASE_AWAY: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, no socket file, timed out (TimeoutError: no answer in time)
    asyncpg.PostgresConnectionError,  # the connection broke, or was never made
    asyncpg.OperatorInterventionError,  # shutting down, starting up, crashed
    asyncpg.TooManyConnectionsError,
    # Mid-failover, the writes' address may lead to a standby for a while.
    asyncpg.ReadOnlySQLTransactionError,
)
"""Errors that say PostgreSQL cannot be reached for now, rather than that the work is wrong."""

T = TypeVar("T")


async def retry_while_database_away(
    work: Callable[[], Awaitable[T]],
    *,
    give_up_at: float,
    what: str,
    extra: Mapping[str, object] | None = None,
) -> T:
    """Await `work()`; while PostgreSQL is away, again; give up at `give_up_at` (time.monotonic).

    For a write that records an effect already had (a request answered, a message posted):
    left unrecorded, the effect would be had again once its claim ran out.
    """
    delays = RetryDelays(0.5, 5.0)
    bound: float | None = None  # the first try is made in full, however late it comes
    while True:
        try:
            if bound is None:
                # Not even asyncio.timeout(None): its enter and exit cost every answer recorded.
                return await work()
            # A retry ends by `give_up_at` too: past it, another process may hold the claim.
            async with asyncio.timeout(bound):
                return await work()
        except DATABASE_AWAY as error:
            delay = delays.next_delay()
            if time.monotonic() + delay > give_up_at:
                raise
            # One line per record at WARNING: a dispatcher with hundreds of answers in flight
            # would otherwise write thousands during an outage of a minute.
            logger.log(
                logging.WARNING if bound is None else logging.DEBUG,
                "%s failed; retrying",
                what,
                extra={
                    **(extra or {}),
                    "error": str(error) or type(error).__name__,
                    "retry_in_seconds": delay,
                },
            )
            await asyncio.sleep(delay)
            bound = max(give_up_at - time.monotonic(), 0.0)


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL script, named `<source>/<file>` in the schema's migration table."""

    name: str
    sql: str


def load_migrations(package: str, source: str | None = None) -> list[Migration]:
    """Return the `*.sql` files of `<package>.migrations`, in file-name order."""
    folder = resources.files(package).joinpath("migrations")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    prefix = source or package
    return [Migration(f"{prefix}/{entry.name}", entry.read_text()) for entry in files]


def runtime_migrations() -> list[Migration]:
    """Return the tables the runtime itself needs in every service schema (the outbox)."""
    return load_migrations(__package__ or "webhook_tasks_runtime", "runtime")


MIGRATION_TIMEOUT_SECONDS = 24 * 3600.0
"""How long one migration may run: a rewrite of a large table may take minutes, and a replica
waits as long for the lock another one migrates under."""


async def create_pool(
    dsn: str, schema: str, *, max_size: int = 10, statement_timeout: float = 30.0
) -> asyncpg.Pool:
    """Open a pool whose connections work in `schema`; none waits long for PostgreSQL.

    Connecting, and each statement's answer, take at most `statement_timeout` seconds: a
    server that hangs, or a connection dropped without a word (a failover), then fails the
    work with TimeoutError (one of DATABASE_AWAY) rather than holding it, and its
    connection, for ever.
    """
    _check_schema_name(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        timeout=statement_timeout,
        command_timeout=statement_timeout,
        server_settings={"search_path": schema, "application_name": f"webhook-tasks-{schema}"},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, migrations: list[Migration]) -> list[str]:
    """Create `schema` if missing and apply the migrations it has not seen yet; return their names.

    An advisory lock serialises replicas that start at once. A schema that exists, made by a
    DBA and owned by the services' role, needs no privilege on the database itself.
    """
    _check_schema_name(schema)
    lock_key = int.from_bytes(
        hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", lock_key, timeout=MIGRATION_TIMEOUT_SECONDS
        )
        # Only when missing: PostgreSQL asks for CREATE on the database even with IF NOT
        # EXISTS, which a role given a schema of its own by the DBA need not have.
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
        ):
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')  # noqa: S608
        done = {row["name"] for row in rows}
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for migration in migrations:
            if migration.name in done:
                continue
            await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT_SECONDS)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (name) VALUES ($1)',  # noqa: S608
                migration.name,
            )
            applied.append(migration.name)
    if applied:
        logger.info("applied migrations", extra={"schema": schema, "migrations": applied})
    return applied


async def _keep_session(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset sends RESET ALL, UNLISTEN and unlocks on every release: a round
    # trip per use that costs more than the work of a short transaction. The services keep no
    # session state (settings come with the connection, locks are transaction-scoped, no
    # LISTEN), so there is nothing to reset. An open transaction is still rolled back by the
    # pool before this runs.
    return None


def _check_schema_name(schema: str) -> None:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
