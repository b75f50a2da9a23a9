"""The broker stops answering a while: callbacks get 503, no service exits, every task ends once.

The system runs on a broker (and a PostgreSQL server) of its own; the broker is
frozen (SIGSTOP), as a hung or cut-off broker would be, while an external service
sends the callbacks of tasks already dispatched, and thawed some seconds later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_tasks_runtime.embedded import EmbeddedKafka, EmbeddedPostgres
from webhook_tasks_runtime.infra import Infrastructure

from .conftest import RunningSystem, running_system
from .e2e_bursts import (
    assert_each_ended_once,
    burst_requests,
    connect,
    ended,
    every_task_dispatched,
    http_session,
    post_success,
    publish_all,
    tally,
    warm_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAVE = 20
HANG_SECONDS = 12.0


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedKafka]:
    kafka = EmbeddedKafka()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def hang_system(
    database: tuple[EmbeddedPostgres, str],
    broker: EmbeddedKafka,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningSystem]:
    _, url = database
    own = Infrastructure(url, broker.bootstrap_servers, "embedded")
    # A callback waits at most 2 s for Kafka before its 503.
    env = {"GATEWAY_PUBLISH_TIMEOUT_SECONDS": "2"}
    with running_system(own, url, Path(tmp_path_factory.mktemp("hang-logs")), env) as system:
        yield system


async def test_callbacks_refused_while_the_broker_hangs_go_through_after_it(
    hang_system: RunningSystem, broker: EmbeddedKafka
) -> None:
    system = hang_system
    await warm_up(system)
    requests = burst_requests(system, "hang", WAVE, timeouts=[180], outcome="never")
    task_ids = [request.task_id for request in requests]
    await publish_all(system, requests)
    conn = await connect(system)
    try:
        states = await every_task_dispatched(conn, task_ids)
    finally:
        await conn.close()
    waiting = {state.correlation_id for state in states}

    broker.freeze()
    frozen = time.monotonic()
    try:
        async with http_session() as http:
            cids = sorted(waiting)
            refused = await asyncio.gather(*(post_success(http, system, cid) for cid in cids))
            # Nothing is acknowledged that Kafka does not hold.
            assert tally(refused) == {503: WAVE}
            await asyncio.sleep(max(HANG_SECONDS - (time.monotonic() - frozen), 0))
            assert system.stack.exited() == {}, "a service exited while the broker hung"
            broker.thaw()
            thawed = time.monotonic()
            # As an external service does: again, after the Retry-After, until accepted.
            for _ in range(30):
                answers = dict(
                    zip(
                        cids,
                        await asyncio.gather(*(post_success(http, system, c) for c in cids)),
                        strict=True,
                    )
                )
                cids = [cid for cid, status in answers.items() if status != 202]
                if not cids:
                    break
                await asyncio.sleep(2)
            assert cids == [], "callbacks still refused 60 s after the broker came back"
    finally:
        broker.thaw()  # harmless if it is thawed already; else later tests would hang

    found, ended_at = await ended(system, task_ids)
    print(f"every task ended {ended_at - thawed:.1f}s after the broker came back")
    assert_each_ended_once(found, WAVE, "completed", "result")
    assert system.stack.exited() == {}
