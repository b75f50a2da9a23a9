"""Requests sent in the background: the consumer's pace, back-pressure and shutdown."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from webhook_tasks_dispatcher import repository as repo
from webhook_tasks_dispatcher.client import WebhookClient
from webhook_tasks_dispatcher.guard import UrlGuard
from webhook_tasks_dispatcher.service import Dispatcher

from .conftest import DispatcherUnderTest, HeldService, resolve_publicly, with_service
from .test_dispatcher_retries import attempts, the_task
from .test_dispatcher_service import task_request

pytestmark = pytest.mark.integration


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_consumed_task_is_recorded_before_its_request_is_answered(
    under_test: DispatcherUnderTest,
) -> None:
    service = HeldService()
    dispatcher = with_service(under_test, service)
    request = task_request()
    in_flight_before = metric("webhook_tasks_dispatcher_requests_in_flight")
    accepted_before = metric("webhook_tasks_dispatcher_attempts_total", outcome="accepted")

    # Returns while the service still holds the request: the consumer moves on.
    await asyncio.wait_for(dispatcher.consume(request), 10)
    await service.wait_for(1)
    assert (await the_task(under_test, request.task_id)).status.value == "pending"
    assert metric("webhook_tasks_dispatcher_requests_in_flight") == in_flight_before + 1

    service.answer.set()
    await dispatcher.drain()
    assert (await the_task(under_test, request.task_id)).status.value == "initiated"
    assert metric("webhook_tasks_dispatcher_requests_in_flight") == in_flight_before
    assert (
        metric("webhook_tasks_dispatcher_attempts_total", outcome="accepted") == accepted_before + 1
    )


async def test_consuming_waits_while_every_slot_is_taken(
    under_test: DispatcherUnderTest,
) -> None:
    service = HeldService()
    dispatcher = with_service(under_test, service, max_in_flight=2)
    first, second, third = task_request(), task_request(), task_request()
    await dispatcher.consume(first)
    await dispatcher.consume(second)
    await service.wait_for(2)

    waiting = asyncio.create_task(dispatcher.consume(third))
    await asyncio.sleep(0.2)
    assert not waiting.done(), "a third request went out with two in flight"
    async with under_test.pool.acquire() as conn:
        # Not claimed while it waits: a lease running out meanwhile would let another send it.
        assert await repo.find_tasks(conn, third.task_id) == []

    service.answer.set()
    await asyncio.wait_for(waiting, 10)
    await dispatcher.drain()
    for request in (first, second, third):
        assert (await the_task(under_test, request.task_id)).status.value == "initiated"


async def test_a_task_waiting_for_a_slot_longer_than_a_lease_is_sent_once(
    under_test: DispatcherUnderTest,
) -> None:
    held = HeldService()
    busy = with_service(under_test, held, max_in_flight=1)
    other = under_test.another()
    await busy.consume(task_request())
    await held.wait_for(1)
    waiting_request = task_request()
    waiting = asyncio.create_task(busy.consume(waiting_request))
    await asyncio.sleep(0.2)

    # Far past any lease, another replica's sender looks for requests to send.
    under_test.clock.advance(seconds=3600)
    await other.send_due()
    held.answer.set()
    await asyncio.wait_for(waiting, 10)
    await busy.drain()

    task = await the_task(under_test, waiting_request.task_id)
    assert task.status.value == "initiated"
    expected_id = f"msg_{task.correlation_id}"
    sent = [r.headers["webhook-id"] for r in under_test.service.received] + held.arrived
    assert sent.count(expected_id) == 1, sent


async def test_stopping_lets_requests_finish_within_the_grace_then_hands_back_the_rest(
    under_test: DispatcherUnderTest,
) -> None:
    service = HeldService()
    dispatcher = with_service(under_test, service)
    answered, held = task_request(), task_request()
    await dispatcher.consume(answered)
    await service.wait_for(1)
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=0.05, shutdown_grace=0.5))
    await asyncio.sleep(0.05)

    sender.cancel()
    await asyncio.sleep(0.1)
    # Within the grace: the first request is answered and recorded as usual.
    service.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert (await the_task(under_test, answered.task_id)).status.value == "initiated"

    service.answer.clear()
    await dispatcher.consume(held)
    await service.wait_for(2)
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=0.05, shutdown_grace=0.2))
    await asyncio.sleep(0.05)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender

    # Past the grace: the request is stopped and due again at once, for another process.
    task = await the_task(under_test, held.task_id)
    assert task.status.value == "pending"
    async with under_test.pool.acquire() as conn:
        assert await repo.next_request_due(conn) == under_test.clock.now


async def test_a_stop_that_interrupts_a_claim_hands_the_claimed_requests_back(
    under_test: DispatcherUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    under_test.service.answer = lambda request: httpx.Response(503)
    request = task_request()
    await under_test.dispatcher.consume(request)
    await under_test.dispatcher.drain()
    under_test.clock.advance(3600)  # its retry is due
    claimed = asyncio.Event()
    claim = repo.claim_due_requests

    async def claim_then_stall(*args: Any, **options: Any) -> list[repo.PendingRequest]:
        # The rows are leased on the server; the stop comes before the answer is read.
        taken = await claim(*args, **options)
        claimed.set()
        await asyncio.sleep(0.5)
        return taken

    monkeypatch.setattr(repo, "claim_due_requests", claim_then_stall)
    sender = asyncio.create_task(under_test.dispatcher.run_sender(poll_interval=0.05))
    await asyncio.wait_for(claimed.wait(), 10)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender

    # Due again at once, for the next process, not only once its lease ran out.
    async with under_test.pool.acquire() as conn:
        assert await repo.next_request_due(conn) == under_test.clock.now


async def test_a_sender_out_of_slots_sends_the_next_due_request_as_soon_as_one_frees(
    under_test: DispatcherUnderTest,
) -> None:
    service = HeldService()
    dispatcher = with_service(under_test, service, max_in_flight=1)
    for _ in range(2):
        await dispatcher.dispatch(task_request(mode="sync"))  # each sent by the sender

    # Polling alone would look again only 30 s on.
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=30))
    try:
        await service.wait_for(1)
        await asyncio.sleep(0.2)
        assert len(service.arrived) == 1, "the one slot is taken"
        service.answer.set()
        await service.wait_for(2)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender


def one_slot_per_host(under_test: DispatcherUnderTest) -> tuple[HeldService, Dispatcher]:
    """Return a held service answering sync requests, and a dispatcher with one slot per host."""
    service = HeldService(body={"status": "success", "resultUrl": "https://cdn.example.com/v"})
    webhooks = WebhookClient(
        httpx.MockTransport(service),
        guard=UrlGuard(resolve=resolve_publicly),
        max_requests_per_host=1,
        timeout_seconds=0.3,  # the longest wait for a slot; a sync request has its task's
    )
    return service, under_test.another(webhooks=webhooks)


async def test_a_request_held_for_a_slot_goes_as_soon_as_one_frees(
    under_test: DispatcherUnderTest,
) -> None:
    service, dispatcher = one_slot_per_host(under_test)
    first, second = task_request(mode="sync", timeoutSeconds=900), task_request()
    await dispatcher.dispatch(first)
    # The clock stands still, and polling alone would look again only 30 s on.
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=30))
    try:
        await service.wait_for(1)  # the sync request holds the host's one slot
        await dispatcher.dispatch(second)  # waits 0.3 s for it, then is held
        held = await the_task(under_test, second.task_id)
        assert "every request this host may have is in flight" in (held.status_reason or "")

        service.answer.set()
        await service.wait_for(2)
        async with asyncio.timeout(10):
            while (await the_task(under_test, second.task_id)).status.value != "initiated":
                await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
    assert (await the_task(under_test, first.task_id)).status.value == "completed"


async def test_a_failure_to_free_held_requests_is_no_failure_of_the_answered_attempt(
    under_test: DispatcherUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, dispatcher = one_slot_per_host(under_test)
    first, second = task_request(mode="sync", timeoutSeconds=900), task_request()

    async def database_away(*_args: object, **_kwargs: object) -> int:
        raise ConnectionRefusedError(111, "Connect call failed")

    await dispatcher.dispatch(first)
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=30))
    try:
        await service.wait_for(1)  # the sync request holds the host's one slot
        await dispatcher.dispatch(second)  # waits 0.3 s for it, then is held
        # Freeing the held request, once the first is answered and recorded, finds
        # PostgreSQL away.
        monkeypatch.setattr(repo, "release_held_requests", database_away)
        service.answer.set()
        async with asyncio.timeout(10):
            while (await the_task(under_test, first.task_id)).status.value != "completed":
                await asyncio.sleep(0.05)
        await dispatcher.drain()
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender

    answered = await the_task(under_test, first.task_id)
    assert [attempt.outcome for attempt in await attempts(under_test, answered)] == ["accepted"]
    held = await the_task(under_test, second.task_id)
    assert held.status.value == "pending"
    assert "every request this host may have is in flight" in (held.status_reason or "")


async def test_an_answer_left_unrecorded_while_postgresql_is_away_is_no_failed_attempt(
    under_test: DispatcherUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recording the acceptance finds PostgreSQL away until the retries give up (after half
    # the lease, 1 s here); the writes after that find it back.
    dispatcher = under_test.another(dispatch_lease=timedelta(seconds=2))

    async def database_away(*_args: object, **_kwargs: object) -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(Dispatcher, "_settle_acceptance", database_away)
    request = task_request()  # the service answers 202: accepted
    await dispatcher.dispatch(request)
    await dispatcher.drain()

    task = await the_task(under_test, request.task_id)
    # Recorded as a failed attempt, it would count against the limit, be sent again at once
    # and, on the last attempt, fail a task the service accepted. It goes again only once
    # its claim runs out, as when the process dies after sending.
    assert await attempts(under_test, task) == []
    assert task.status.value == "pending"
    claimed = await under_test.pool.fetchrow(
        "SELECT attempts, next_attempt_at FROM dispatch_requests WHERE correlation_id = $1",
        task.correlation_id,
    )
    assert claimed is not None
    assert claimed["next_attempt_at"] > under_test.clock()
