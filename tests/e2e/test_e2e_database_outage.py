"""PostgreSQL goes away mid-flow and comes back: no service exits, every task ends once.

The system runs on a PostgreSQL server of its own, shut down (fast, as a failover
cuts clients off) while tasks are being dispatched and called back, and started
again on the same data some seconds later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_tasks_runtime.embedded import EmbeddedPostgres
from webhook_tasks_runtime.infra import Infrastructure

from .conftest import RunningSystem, running_system, wait_until
from .e2e_bursts import (
    assert_each_ended_once,
    burst_requests,
    connect,
    ended,
    publish_all,
    task_states,
    warm_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAVE = 20
OUTAGE_SECONDS = 6.0


@pytest.fixture(scope="module")
def outage_system(
    infrastructure: Infrastructure,
    database: tuple[EmbeddedPostgres, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningSystem]:
    _, url = database
    # A request sent as the database went away, whose acceptance was not recorded, goes
    # again once its lease runs out: short here, so the test need not wait minutes.
    env = {"REQUEST_TIMEOUT_SECONDS": "5", "DISPATCH_LEASE_SECONDS": "15"}
    with running_system(
        infrastructure, url, Path(tmp_path_factory.mktemp("outage-logs")), env
    ) as system:
        yield system


async def test_every_task_ends_once_across_a_database_outage(
    outage_system: RunningSystem, database: tuple[EmbeddedPostgres, str]
) -> None:
    system, (postgres, _) = outage_system, database
    await warm_up(system)
    # The demo service calls back 2 s after accepting: the first wave's callbacks come
    # while the database is away, the second wave's task events too.
    waves = {
        name: burst_requests(system, f"outage-{name}", WAVE, timeouts=[120], outcome="success")
        for name in ("before", "during", "after")
    }
    task_ids = [request.task_id for wave in waves.values() for request in wave]
    conn = await connect(system)
    try:
        await publish_all(system, waves["before"])
        await wait_until(
            lambda: task_states(conn, [r.task_id for r in waves["before"]]),
            lambda rows: len(rows) == WAVE and all(r.status == "initiated" for r in rows),
            what="the first wave dispatched",
            interval=0.05,
        )
    finally:
        await conn.close()

    postgres.interrupt()
    stopped = time.monotonic()
    await publish_all(system, waves["during"])
    await asyncio.sleep(OUTAGE_SECONDS)
    assert system.stack.exited() == {}, "a service exited while the database was away"
    postgres.resume()
    back = time.monotonic()
    await publish_all(system, waves["after"])

    found, ended_at = await ended(system, task_ids)
    print(
        f"database away {back - stopped:.1f}s; all ended {ended_at - back:.1f}s after it came back"
    )
    assert_each_ended_once(found, 3 * WAVE, "completed", "result")
    assert system.stack.exited() == {}
