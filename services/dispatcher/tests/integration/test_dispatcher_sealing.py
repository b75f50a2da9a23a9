"""webhookAuth at rest: sealed while a request waits, opened only to send it."""

from __future__ import annotations

import httpx
import pytest
from webhook_tasks_contracts import CallbackKey, TaskFailed
from webhook_tasks_dispatcher.sealing import RequestSealer

from .conftest import KEYS, DispatcherUnderTest
from .test_dispatcher_retries import answers, the_task
from .test_dispatcher_service import SECRET, lifecycle, task_request

pytestmark = pytest.mark.integration


async def stored_auth(under_test: DispatcherUnderTest) -> list[str]:
    rows = await under_test.pool.fetch("SELECT auth FROM dispatch_requests")
    return [row["auth"] for row in rows]


async def test_the_secret_is_sealed_while_a_retry_waits_and_sent_in_the_clear(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.Response(503), httpx.Response(202))

    await under_test.dispatcher.dispatch(task_request())

    (stored,) = await stored_auth(under_test)
    assert stored.startswith("sealed:v1:test:")
    assert SECRET not in stored
    dump = str(await under_test.pool.fetch("SELECT * FROM dispatch_requests"))
    assert SECRET not in dump
    under_test.clock.advance(3600)
    assert await under_test.dispatcher.send_due() == 1
    assert [request.headers["authorization"] for request in under_test.service.received] == [
        SECRET,
        SECRET,
    ]
    assert await stored_auth(under_test) == []


async def test_after_key_rotation_old_seals_still_open_and_new_ones_use_the_newest_key(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.Response(503), httpx.Response(202))
    await under_test.dispatcher.dispatch(task_request())
    rotated = under_test.another(sealer=RequestSealer([CallbackKey("next", b"n" * 32), *KEYS]))

    under_test.clock.advance(3600)
    assert await rotated.send_due() == 1

    assert under_test.service.received[-1].headers["authorization"] == SECRET


async def test_a_seal_whose_key_was_retired_fails_the_task_with_the_reason(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.Response(503))
    request = task_request()
    await under_test.dispatcher.dispatch(request)
    retired = under_test.another(sealer=RequestSealer([CallbackKey("next", b"n" * 32)]))

    under_test.clock.advance(3600)
    assert await retired.send_due() == 1

    assert len(under_test.service.received) == 1
    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert "key 'test'" in event.reason
    assert "no longer configured" in event.reason
    assert await stored_auth(under_test) == []


async def test_a_secret_stored_in_the_clear_by_an_earlier_version_is_still_sent(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.Response(503), httpx.Response(202))
    await under_test.dispatcher.dispatch(task_request())
    await under_test.pool.execute("UPDATE dispatch_requests SET auth = $1", SECRET)

    under_test.clock.advance(3600)
    assert await under_test.dispatcher.send_due() == 1

    assert under_test.service.received[-1].headers["authorization"] == SECRET
