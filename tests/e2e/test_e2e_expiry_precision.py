"""A thousand silent tasks, deadlines spread over seconds: each announced within 1 s (p99)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
from pydantic import TypeAdapter
from webhook_tasks_contracts import DeadlineReached, TaskExpired, lifecycle_event_adapter

from .conftest import RunningSystem, wait_until
from .e2e_bursts import (
    burst_requests,
    connect,
    percentile,
    publish_all,
    read_topic,
    task_states,
    warm_up,
)

EventT = TypeVar("EventT", DeadlineReached, TaskExpired)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TASKS = 1000
# Dispatching a thousand tasks takes a few seconds here; the shortest timeout leaves
# room for that, so every deadline is stored well before it passes.
TIMEOUTS = [8, 9, 10, 11]


def lateness_seconds(events: Sequence[DeadlineReached | TaskExpired]) -> list[float]:
    """Return, per event, how long after the task's deadline it happened."""
    return [(event.occurred_at - event.deadline_at).total_seconds() for event in events]


def summary(name: str, lateness: list[float]) -> str:
    """Return the percentiles of one lateness series in milliseconds."""
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    worst = max(lateness)
    return f"{name}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"


async def test_tasks_expire_within_a_second_of_their_deadlines(system: RunningSystem) -> None:
    # The measurement starts once every consumer group has joined, not during the joins.
    await warm_up(system)
    requests = burst_requests(system, "precision", TASKS, timeouts=TIMEOUTS, outcome="never")
    task_ids = [request.task_id for request in requests]
    await publish_all(system, requests)
    conn = await connect(system)
    try:
        states = await wait_until(
            lambda: task_states(conn, task_ids),
            lambda rows: len(rows) == TASKS and all(row.status == "expired" for row in rows),
            within=120,
            what="every task expired",
            interval=0.5,
        )
    finally:
        await conn.close()
    correlation_ids = {state.correlation_id for state in states}
    deadlines = [state.deadline_at for state in states if state.deadline_at is not None]
    spread = (max(deadlines) - min(deadlines)).total_seconds()

    expired = await first_of_each(
        system, system.topics.task_lifecycle, lifecycle_event_adapter, TaskExpired, correlation_ids
    )
    reached = await first_of_each(
        system,
        system.topics.deadline_reached,
        TypeAdapter(DeadlineReached),
        DeadlineReached,
        correlation_ids,
    )

    expiry_lateness = lateness_seconds(expired)
    reached_lateness = lateness_seconds(reached)
    print(
        f"{TASKS} deadlines over {spread:.1f}s; {summary('expired', expiry_lateness)};"
        f" {summary('deadline reached', reached_lateness)}"
    )
    assert spread > 3
    assert min(reached_lateness) >= 0, "a deadline was announced before it passed"
    assert min(expiry_lateness) >= 0, "a task expired before its deadline"
    # The expirer announces each deadline well inside the second; the whole way to the
    # task's expiry (relay, broker, the dispatcher's transaction) must fit in it too.
    assert percentile(reached_lateness, 0.99) < 1.0
    assert percentile(expiry_lateness, 0.99) < 1.0


async def first_of_each(
    system: RunningSystem,
    topic: str,
    adapter: TypeAdapter[Any],
    kind: type[EventT],
    correlation_ids: set[str],
) -> list[EventT]:
    """Read `topic` until every task has a `kind` event; return the first one of each task."""

    def every_task_seen(events: list[Any]) -> bool:
        seen = {event.correlation_id for event in events if isinstance(event, kind)}
        return len(seen) == len(correlation_ids)

    found = await read_topic(system, topic, adapter, correlation_ids, done=every_task_seen)
    firsts: dict[str, EventT] = {}
    for event in found:
        if isinstance(event, kind):
            firsts.setdefault(event.correlation_id, event)
    return list(firsts.values())
