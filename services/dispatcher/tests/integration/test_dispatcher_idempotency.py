"""Which task events are duplicates: the same request of the same task, also after upgrading."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from webhook_tasks_runtime.db import migrate

from .conftest import DispatcherUnderTest, migrations_through
from .test_dispatcher_service import task_request

pytestmark = pytest.mark.integration

UNAMBIGUOUS_KEYS = "webhook_tasks_dispatcher/0008_unambiguous_idempotency_keys.sql"


@pytest.mark.parametrize("slash_first", [True, False])
async def test_tasks_whose_ids_and_request_ids_read_alike_are_each_dispatched(
    under_test: DispatcherUnderTest, slash_first: bool
) -> None:
    prefix = f"orders-{uuid.uuid4().hex[:8]}"
    one = task_request().model_copy(update={"task_id": f"{prefix}/42", "request_id": "retry-1"})
    other = task_request().model_copy(update={"task_id": prefix, "request_id": "42/retry-1"})
    first, second = (one, other) if slash_first else (other, one)

    await under_test.dispatcher.dispatch(first)
    await under_test.dispatcher.dispatch(second)
    await under_test.dispatcher.dispatch(other)
    await under_test.dispatcher.dispatch(one)

    assert len(under_test.service.received) == 2
    count = await under_test.pool.fetchval("SELECT count(*) FROM tasks")
    assert count == 2


async def test_upgrading_rewrites_the_keys_of_task_ids_with_a_slash_or_percent_sign(
    schema_before: Callable[[str], Awaitable[asyncpg.Pool]],
) -> None:
    before_upgrade = await schema_before(UNAMBIGUOUS_KEYS)
    # Keys as the earlier releases wrote them: "<task id>/<request id or event id>".
    written = {
        "c1": ("orders/42", "orders/42/retry-1"),
        "c2": ("orders", "orders/42/retry-2"),
        "c3": ("50%off", "50%off/r"),
        "c4": ("plain", "plain/r"),
        "c5": ("rekeying:x", "rekeying:x/r"),
    }
    for correlation_id, (task_id, key) in written.items():
        await before_upgrade.execute(
            "INSERT INTO tasks (correlation_id, idempotency_key, task_id, user_id, project_id,"
            " webhook_url, mode, timeout_seconds, status, created_at, updated_at)"
            " VALUES ($1, $2, $3, 'u', 'p', 'https://svc.example.com/run', 'callback', 60,"
            " 'initiated', now(), now())",
            correlation_id,
            key,
            task_id,
        )

    schema = await before_upgrade.fetchval("SELECT current_schema()")
    upgrade = migrations_through(UNAMBIGUOUS_KEYS)
    assert await migrate(before_upgrade, schema, upgrade) == [UNAMBIGUOUS_KEYS]

    rows = await before_upgrade.fetch("SELECT correlation_id, idempotency_key FROM tasks")
    keys = {row["correlation_id"]: row["idempotency_key"] for row in rows}
    assert keys == {
        "c1": "orders%2F42/retry-1",
        "c2": "orders/42/retry-2",
        "c3": "50%25off/r",
        "c4": "plain/r",
        "c5": "rekeying:x/r",
    }
    # What the dispatcher computes now for the same requests: a replay is still a duplicate.
    replayed = task_request().model_copy(update={"task_id": "orders/42", "request_id": "retry-1"})
    assert replayed.idempotency_key == keys["c1"]


async def test_a_request_an_earlier_release_recorded_during_the_upgrade_is_a_duplicate(
    under_test: DispatcherUnderTest,
) -> None:
    request = task_request().model_copy(
        update={"task_id": f"orders/{uuid.uuid4().hex[:8]}", "request_id": "retry-1"}
    )
    await under_test.dispatcher.dispatch(request)
    # As a replica of the earlier release, still running during a rolling upgrade, records
    # it: under the key without the task id escaped.
    earlier = f"{request.task_id}/retry-1"
    await under_test.pool.execute("UPDATE tasks SET idempotency_key = $1", earlier)

    await under_test.dispatcher.dispatch(request)

    assert len(under_test.service.received) == 1
    assert await under_test.pool.fetchval("SELECT count(*) FROM tasks") == 1
