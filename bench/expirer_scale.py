"""Expirer scale: time to find and emit 10,000 due deadlines among 10,000 versus 1,000,000 pending.

Run it alone with `python -m bench.expirer_scale` (DATABASE_URL if set, else an
embedded PostgreSQL), or call `measure()` from a benchmark run. Each size gets a
fresh schema migrated like the expirer's, filled with pending deadlines in the
future, then the due ones; the timed part is the expirer's own scanner claiming
every due deadline and writing its DeadlineReached events to the outbox, which
is all the expirer does per deadline (the relay's publishing does not depend on
how many are pending). Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from webhook_tasks_contracts import Topics
from webhook_tasks_expirer.reconciler import Reconciler
from webhook_tasks_expirer.scanner import DeadlineScanner
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.embedded import EmbeddedPostgres

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
"""The scanner's fixed clock: pending deadlines lie after it, due ones before it."""

# Bulk fills of one schema's tables, outside the services: a benchmark fixture.
_FILL_PENDING = """
INSERT INTO deadlines (correlation_id, task_id, deadline_at)
SELECT 'pending-' || n, 'task-' || n, $1::timestamptz + (n % 86400) * interval '1 second'
       + interval '1 second'
FROM generate_series(1, $2::int) AS n
"""
_WATCH_PENDING = """
INSERT INTO watched_tasks (correlation_id, task_id, deadline_at)
SELECT correlation_id, task_id, deadline_at FROM deadlines
"""
_FILL_DUE = """
WITH due AS (
    INSERT INTO deadlines (correlation_id, task_id, deadline_at)
    SELECT 'due-' || $3::text || '-' || n, 'task-' || n,
           $1::timestamptz - (n % 600) * interval '1 second'
    FROM generate_series(1, $2::int) AS n
    RETURNING correlation_id, task_id, deadline_at
)
INSERT INTO watched_tasks (correlation_id, task_id, deadline_at)
SELECT correlation_id, task_id, deadline_at FROM due
"""


@dataclass(frozen=True)
class ScaleResult:
    """How long emitting the due deadlines took, at one number pending."""

    pending: int
    due: int
    seconds: list[float]
    sweep_seconds: float
    """One reconciliation sweep over the same tables, with nothing to repair."""

    @property
    def median(self) -> float:
        """Return the median of the timed runs, in seconds."""
        return statistics.median(self.seconds)


async def measure_one(
    database_url: str, *, pending: int, due: int, rounds: int = 5, batch_size: int = 500
) -> ScaleResult:
    """Fill `pending` future deadlines, then time emitting `due` passed ones, `rounds` times."""
    schema = f"bench_expirer_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(database_url, schema, max_size=2)
    try:
        await migrate(pool, schema, runtime_migrations() + load_migrations("webhook_tasks_expirer"))
        async with pool.acquire() as conn:
            await conn.execute(_FILL_PENDING, NOW, pending)
            await conn.execute(_WATCH_PENDING)
            await conn.execute("ANALYZE deadlines")
        scanner = DeadlineScanner(
            pool,
            topics=Topics("bench-expirer-scale"),
            wake_relay=lambda: None,
            clock=lambda: NOW,
            batch_size=batch_size,
        )
        seconds = []
        for round_number in range(rounds):
            async with pool.acquire() as conn:
                await conn.execute(_FILL_DUE, NOW, due, str(round_number))
                await conn.execute("TRUNCATE outbox")
            started = time.perf_counter()
            emitted = await scanner.scan()
            seconds.append(time.perf_counter() - started)
            if len(emitted) != due:
                raise RuntimeError(f"emitted {len(emitted)} deadlines, expected {due}")
            async with pool.acquire() as conn:
                remaining = await conn.fetchval("SELECT count(*) FROM deadlines")
            if remaining != pending:
                raise RuntimeError(f"{remaining} deadlines left, expected {pending}")
        reconciler = Reconciler(
            pool,
            topics=Topics("bench-expirer-scale"),
            wake_relay=lambda: None,
            on_deadline_restored=lambda _deadline: None,
            clock=lambda: NOW,
        )
        started = time.perf_counter()
        repairs = await reconciler.sweep()
        sweep_seconds = time.perf_counter() - started
        if repairs.restored or repairs.dropped:
            raise RuntimeError("the sweep repaired a healthy table")
        return ScaleResult(pending, due, seconds, sweep_seconds)
    finally:
        await _drop(pool, schema)
        await pool.close()


async def measure(
    database_url: str, *, sizes: Sequence[int] = (10_000, 1_000_000), due: int = 10_000
) -> list[ScaleResult]:
    """Return one result per number of pending deadlines in `sizes`."""
    return [await measure_one(database_url, pending=size, due=due) for size in sizes]


def render(results: Sequence[ScaleResult]) -> str:
    """Return the results as lines of text, with the ratio of the last to the first."""
    lines = [
        f"{r.pending:>9,} pending: emitting {r.due:,} due deadlines took"
        f" {r.median * 1000:,.0f} ms (median of {len(r.seconds)}:"
        f" {', '.join(f'{s * 1000:,.0f}' for s in r.seconds)} ms),"
        f" {r.due / r.median:,.0f} deadlines/s;"
        f" one reconciliation sweep {r.sweep_seconds * 1000:,.0f} ms"
        for r in results
    ]
    if len(results) > 1:
        ratio = results[-1].median / results[0].median
        lines.append(f"ratio {results[-1].pending:,} / {results[0].pending:,} pending: {ratio:.2f}")
    return "\n".join(lines)


async def _drop(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL")
    embedded = None
    if not database_url:
        embedded = EmbeddedPostgres()
        database_url = embedded.start()
    try:
        results = asyncio.run(measure(database_url, sizes=args.sizes, due=args.due))
    finally:
        if embedded is not None:
            embedded.stop()
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
