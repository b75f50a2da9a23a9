"""Retries, the SSRF refusal, sync mode and circuit breakers, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook
from webhook_tasks_contracts import (
    CallbackReceived,
    TaskCompleted,
    TaskDispatched,
    TaskFailed,
    lifecycle_event_adapter,
    utc_now,
)
from webhook_tasks_dispatcher import repository as repo
from webhook_tasks_dispatcher.breaker import CircuitBreakers
from webhook_tasks_dispatcher.client import DeliveryResult, OutboundRequest, WebhookClient
from webhook_tasks_dispatcher.guard import UrlGuard
from webhook_tasks_dispatcher.retry import RetryPolicy
from webhook_tasks_dispatcher.service import Dispatcher
from webhook_tasks_dispatcher.signing import SigningKeys
from webhook_tasks_runtime.backoff import RetryDelays
from webhook_tasks_runtime.db import migrate

from .conftest import (
    DispatcherUnderTest,
    HeldService,
    migrations_through,
    resolve_publicly,
    with_service,
)
from .test_dispatcher_service import SECRET, task_request

pytestmark = pytest.mark.integration


async def lifecycle(under_test: DispatcherUnderTest) -> list[object]:
    return [
        lifecycle_event_adapter.validate_json(payload)
        for topic, _key, payload in await under_test.outbox()
        if topic == under_test.topics.task_lifecycle
    ]


async def the_task(under_test: DispatcherUnderTest, task_id: str) -> repo.TaskRow:
    async with under_test.pool.acquire() as conn:
        (task,) = await repo.find_tasks(conn, task_id)
    return task


async def status_of(under_test: DispatcherUnderTest, task_id: str) -> str:
    return (await the_task(under_test, task_id)).status.value


async def attempts(under_test: DispatcherUnderTest, task: repo.TaskRow) -> list[repo.AttemptRow]:
    async with under_test.pool.acquire() as conn:
        return await repo.attempts_for(conn, task.correlation_id)


def answers(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def answer(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return answer


async def a_task_waiting_to_retry(
    under_test: DispatcherUnderTest, status_code: int = 503
) -> repo.TaskRow:
    """Dispatch a task whose first request is answered `status_code`; return its row."""
    under_test.service.answer = answers(httpx.Response(status_code))
    request = task_request()
    await under_test.dispatcher.dispatch(request)
    return await the_task(under_test, request.task_id)


async def run_retries(
    under_test: DispatcherUnderTest, dispatcher: Dispatcher | None = None
) -> None:
    """Move the clock to each scheduled retry and let the sender send it, until none is due."""
    for _ in range(50):
        async with under_test.pool.acquire() as conn:
            due = await repo.next_request_due(conn)
        if due is None:
            return
        under_test.clock.now = max(under_test.clock.now, due)
        await (dispatcher or under_test.dispatcher).send_due()
    pytest.fail("retries never ended")


async def test_a_5xx_is_retried_on_schedule_until_accepted(under_test: DispatcherUnderTest) -> None:
    under_test.service.answer = answers(
        httpx.Response(503, text="busy"),
        httpx.ConnectError("connection refused"),
        httpx.Response(200, json={"status": "accepted"}),
    )
    request = task_request()

    await under_test.dispatcher.dispatch(request)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "pending", "a retrying task stays pending"
    assert task.status_reason is not None
    assert "attempt 2 of 6" in task.status_reason
    (first,) = await attempts(under_test, task)
    assert (first.outcome, first.status_code) == ("rejected", 503)
    assert first.retry_at is not None
    assert under_test.clock.now < first.retry_at <= under_test.clock.now + timedelta(seconds=1)
    assert await under_test.dispatcher.send_due() == 0, "not due yet"

    await run_retries(under_test)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "initiated"
    assert task.status_reason is None
    assert [a.outcome for a in await attempts(under_test, task)] == [
        "rejected",
        "unreachable",
        "accepted",
    ]
    (dispatched,) = await lifecycle(under_test)
    assert isinstance(dispatched, TaskDispatched)
    assert dispatched.mode == "callback"
    sent = under_test.service.received
    assert len(sent) == 3
    assert len({request.headers["webhook-id"] for request in sent}) == 1
    assert {request.content for request in sent} == {sent[0].content}
    assert all(request.headers["authorization"] == SECRET for request in sent)
    async with under_test.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dispatch_requests") == 0


async def test_an_unreachable_service_fails_the_task_after_the_last_attempt(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.ConnectError("connection refused"))
    request = task_request()

    await under_test.dispatcher.dispatch(request)
    await run_retries(under_test)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    history = await attempts(under_test, task)
    assert len(history) == 6
    assert all(a.retry_at is not None for a in history[:-1])
    assert history[-1].retry_at is None
    waits = [
        (later.started_at - earlier.started_at).total_seconds()
        for earlier, later in itertools.pairwise(history)
    ]
    assert all(0 <= wait <= bound for wait, bound in zip(waits, (1, 5, 30, 120, 600), strict=True))
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert event.cause == "dispatch_unreachable"
    assert "could not be reached" in event.reason
    outbox = str(await under_test.outbox())
    assert SECRET not in outbox
    async with under_test.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dispatch_requests") == 0, (
            "the kept request (and its secret) is gone with the task's last attempt"
        )


async def test_429_retry_after_sets_the_next_attempt(under_test: DispatcherUnderTest) -> None:
    under_test.service.answer = answers(
        httpx.Response(429, headers={"retry-after": "42"}),
        httpx.Response(202),
    )
    request = task_request()

    await under_test.dispatcher.dispatch(request)

    task = await the_task(under_test, request.task_id)
    (first,) = await attempts(under_test, task)
    assert first.retry_at == under_test.clock.now + timedelta(seconds=42)
    under_test.clock.advance(41)
    assert await under_test.dispatcher.send_due() == 0
    under_test.clock.advance(1)
    assert await under_test.dispatcher.send_due() == 1
    assert (await the_task(under_test, request.task_id)).status.value == "initiated"


async def test_the_sender_sends_a_retry_when_it_is_due_not_at_its_next_poll(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(
        httpx.Response(429, headers={"retry-after": "1"}),
        httpx.Response(202),
    )
    dispatcher = under_test.another(clock=utc_now)
    request = task_request()
    await dispatcher.dispatch(request)
    (first,) = await attempts(under_test, await the_task(under_test, request.task_id))
    assert first.retry_at is not None

    # Polling alone would find the retry only 30 s on.
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=30))
    try:
        for _ in range(100):
            if (await the_task(under_test, request.task_id)).status.value == "initiated":
                break
            await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
    task = await the_task(under_test, request.task_id)
    assert task.status.value == "initiated", "the retry was not sent within 5 s"
    _, second = await attempts(under_test, task)
    assert first.retry_at <= second.started_at < first.retry_at + timedelta(seconds=0.5)


async def test_a_callback_during_a_retry_wait_finishes_the_task_and_cancels_the_retry(
    under_test: DispatcherUnderTest,
) -> None:
    task = await a_task_waiting_to_retry(under_test, 500)

    await under_test.dispatcher.apply_callback(
        CallbackReceived(correlation_id=task.correlation_id, status="success")
    )
    under_test.clock.advance(3600)

    assert await under_test.dispatcher.send_due() == 0
    assert len(under_test.service.received) == 1
    assert [type(event) for event in await lifecycle(under_test)] == [TaskCompleted]
    async with under_test.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dispatch_requests") == 0, (
            "the kept request (and its secret) is gone with the finished task"
        )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/run", "private address"),
        ("https://[::1]/run", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://svc.example.com/run", "must use https"),
    ],
)
async def test_a_refused_url_fails_the_task_at_once_with_the_reason(
    under_test: DispatcherUnderTest, url: str, why: str
) -> None:
    request = task_request(webhookUrl=url)

    await under_test.dispatcher.dispatch(request)

    assert under_test.service.received == []
    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    (attempt,) = await attempts(under_test, task)
    assert attempt.outcome == "refused"
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert event.cause == "dispatch_rejected"
    assert "webhook URL was refused" in event.reason
    assert why in event.reason


async def test_a_name_resolving_to_a_private_address_is_refused(
    under_test: DispatcherUnderTest,
) -> None:
    async def internal(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "192.168.0.10"]

    http = httpx.MockTransport(under_test.service)
    dispatcher = under_test.another(webhooks=WebhookClient(http, guard=UrlGuard(resolve=internal)))
    request = task_request(webhookUrl="https://rebind.example.com/run")

    await dispatcher.dispatch(request)
    await http.aclose()

    assert under_test.service.received == []
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert "rebind.example.com resolves to a private address (192.168.0.10)" in event.reason


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {
                "status": "success",
                "resultUrl": "https://cdn.example.com/v.mp4",
                "metadata": {"a": 1},
            },
            "completed",
        ),
        ({"status": "error", "error": "model crashed"}, "failed"),
        ({"status": "accepted"}, "failed"),
    ],
)
async def test_sync_mode_completes_the_task_from_the_answer(
    under_test: DispatcherUnderTest, answer: dict[str, object], expected: str
) -> None:
    under_test.service.answer = lambda request: httpx.Response(200, json=answer)
    request = task_request(mode="sync")

    await under_test.dispatcher.dispatch(request)
    assert under_test.service.received == [], "the consumer hands sync requests to the sender"
    assert await under_test.dispatcher.send_due() == 1

    task = await the_task(under_test, request.task_id)
    assert task.status.value == expected
    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [
        TaskDispatched,
        TaskCompleted if expected == "completed" else TaskFailed,
    ]
    dispatched = events[0]
    assert isinstance(dispatched, TaskDispatched)
    assert dispatched.mode == "sync"
    final = events[1]
    if isinstance(final, TaskCompleted):
        assert final.result_url == "https://cdn.example.com/v.mp4"
        assert final.metadata == {"a": 1}
    elif answer["status"] == "error":
        assert isinstance(final, TaskFailed)
        assert (final.cause, final.reason) == ("callback_error", "model crashed")
    else:
        assert isinstance(final, TaskFailed)
        assert "no result" in final.reason


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "error", "error": f"the token {SECRET.removeprefix('Bearer ')} has expired"},
        {
            "status": "success",
            "resultUrl": f"https://cdn.example.com/v.mp4?auth={SECRET.replace(' ', '%20')}",
            "metadata": {"request": {"authorization": SECRET}},
        },
    ],
)
async def test_a_sync_answer_echoing_webhook_auth_is_masked_in_events_and_records(
    under_test: DispatcherUnderTest, answer: dict[str, object]
) -> None:
    under_test.service.answer = lambda request: httpx.Response(200, json=answer)
    request = task_request(mode="sync")

    await under_test.dispatcher.dispatch(request)
    assert await under_test.dispatcher.send_due() == 1

    task = await the_task(under_test, request.task_id)
    assert task.status.value == ("completed" if answer["status"] == "success" else "failed")
    stored = [payload.decode() for _topic, _key, payload in await under_test.outbox()]
    stored += [repr(task), repr(await attempts(under_test, task))]
    credential = SECRET.removeprefix("Bearer ")
    assert [item for item in stored if "**********" in item]
    assert not [item for item in stored if credential in item]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_sync_answer_with_a_number_json_cannot_carry_fails_the_task_once(
    under_test: DispatcherUnderTest, number: str
) -> None:
    answer = '{"status": "success", "metadata": {"score": ' + number + "}}"
    under_test.service.answer = lambda request: httpx.Response(200, content=answer.encode())
    request = task_request(mode="sync")

    await under_test.dispatcher.dispatch(request)
    assert await under_test.dispatcher.send_due() == 1
    under_test.clock.advance(3600)
    assert await under_test.dispatcher.send_due() == 0, "an answered request is not sent again"

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    assert task.status_reason is not None
    assert "a number JSON cannot carry" in task.status_reason
    assert len(under_test.service.received) == 1


@pytest.mark.parametrize("encoding", ["gzip", "br"])
async def test_a_compressed_sync_answer_is_read_or_its_encoding_named(
    under_test: DispatcherUnderTest, encoding: str
) -> None:
    answer = json.dumps({"status": "success", "resultUrl": "https://cdn.example.com/v.mp4"})
    body = gzip.compress(answer.encode()) if encoding == "gzip" else b"\x1b\x00"
    under_test.service.answer = lambda request: httpx.Response(
        200, headers={"content-encoding": encoding}, stream=httpx.ByteStream(body)
    )
    request = task_request(mode="sync")

    await under_test.dispatcher.dispatch(request)
    assert await under_test.dispatcher.send_due() == 1

    task = await the_task(under_test, request.task_id)
    if encoding == "gzip":
        assert (task.status.value, task.result_url) == (
            "completed",
            "https://cdn.example.com/v.mp4",
        )
    else:
        assert task.status.value == "failed"
        assert task.status_reason == (
            "the external service's answer was compressed as br, which the dispatcher cannot"
            " read (it asks for answers uncompressed)"
        )


async def test_a_sync_request_waits_up_to_the_task_timeout(
    under_test: DispatcherUnderTest,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success"})

    under_test.service.answer = answer
    await under_test.dispatcher.dispatch(task_request(mode="sync", timeoutSeconds=900))
    await under_test.dispatcher.send_due()

    (request,) = seen
    assert request.extensions["timeout"]["read"] == 900


async def test_an_open_circuit_holds_a_hosts_tasks_then_probes_and_resumes(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher = under_test.another(
        breakers=CircuitBreakers(failure_threshold=2, cool_down=timedelta(seconds=30))
    )
    under_test.service.answer = answers(httpx.Response(503))
    first, second, third = task_request(), task_request(), task_request()

    await dispatcher.dispatch(first)
    await dispatcher.dispatch(second)  # the second failure in a row opens the circuit
    await dispatcher.dispatch(third)

    assert len(under_test.service.received) == 2, "the third task is held, not sent"
    held = await the_task(under_test, third.task_id)
    assert held.status.value == "pending"
    assert "circuit open for svc.example.com:443" in (held.status_reason or "")
    assert await attempts(under_test, held) == []

    under_test.service.answer = lambda request: httpx.Response(202)
    under_test.clock.advance(10)
    assert await dispatcher.send_due() == 2  # the first two tasks' retries, held again
    assert len(under_test.service.received) == 2
    under_test.clock.advance(25)
    # After the cool-down the first request is the probe; it succeeds and the rest follow.
    assert await dispatcher.send_due() == 3

    for request in (first, second, third):
        task = await the_task(under_test, request.task_id)
        assert task.status.value == "initiated"
        assert task.status_reason is None
    assert len(under_test.service.received) == 5
    bodies = [json.loads(request.content)["taskId"] for request in under_test.service.received]
    assert sorted(set(bodies)) == sorted({first.task_id, second.task_id, third.task_id})


async def test_a_task_an_open_circuit_would_hold_past_its_pending_limit_fails_unsent(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher = under_test.another(
        breakers=CircuitBreakers(failure_threshold=1, cool_down=timedelta(seconds=300)),
        retry=RetryPolicy(max_pending_seconds=100, rng=random.Random(4)),
    )
    under_test.service.answer = answers(httpx.Response(503))
    first, held = task_request(), task_request()
    await dispatcher.dispatch(first)  # answered 503: the circuit opens for 300 s
    # Held to the end of the cool-down, it would still be pending past its 100 s.
    await dispatcher.dispatch(held)

    task = await the_task(under_test, held.task_id)
    assert task.status.value == "failed"
    bodies = [json.loads(request.content)["taskId"] for request in under_test.service.received]
    assert bodies == [first.task_id], "the held task's request was never sent"
    (attempt,) = await attempts(under_test, task)
    assert attempt.outcome == "unreachable"
    (failure,) = await lifecycle(under_test)
    assert isinstance(failure, TaskFailed)
    assert failure.cause == "dispatch_unreachable"
    assert failure.reason == task.status_reason
    assert failure.reason == (
        "the external service could not be reached (not sent: the circuit for "
        "svc.example.com:443 is open, as its last requests failed; not accepted within 100s "
        "of the task's arrival)"
    )
    # The first task's retry, due within a second, meets the same open circuit.
    under_test.clock.advance(1)
    await dispatcher.send_due()
    assert await status_of(under_test, first.task_id) == "failed"
    assert len(under_test.service.received) == 1


async def test_a_retry_after_beyond_the_pending_limit_fails_the_task_at_once(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher = under_test.another(retry=RetryPolicy(max_pending_seconds=60, rng=random.Random(4)))
    under_test.service.answer = answers(httpx.Response(503, headers={"retry-after": "61"}))
    request = task_request()

    await dispatcher.dispatch(request)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    assert task.status_reason == (
        "the external service answered HTTP 503; not accepted within 60s of the task's arrival"
    )
    (attempt,) = await attempts(under_test, task)
    assert attempt.status_code == 503
    assert attempt.retry_at is None


PENDING_SINCE = "webhook_tasks_dispatcher/0009_pending_since.sql"


async def test_upgrading_counts_a_kept_requests_pending_time_from_its_tasks_arrival(
    schema_before: Callable[[str], Awaitable[asyncpg.Pool]],
) -> None:
    pool = await schema_before(PENDING_SINCE)
    arrived = utc_now().replace(microsecond=0) - timedelta(minutes=50)

    async def record_pending(correlation_id: str) -> None:
        # As a release before the migration records a task and its request.
        await pool.execute(
            "INSERT INTO tasks (correlation_id, idempotency_key, task_id, user_id, project_id,"
            " webhook_url, mode, timeout_seconds, status, created_at, updated_at)"
            " VALUES ($1, $1, $1, 'u', 'p', 'https://svc.example.com/run', 'callback', 60,"
            " 'pending', $2, $2)",
            correlation_id,
            arrived,
        )
        await pool.execute(
            "INSERT INTO dispatch_requests (correlation_id, webhook_url, mode, body,"
            " next_attempt_at, lease_seconds, timeout_seconds)"
            " VALUES ($1, 'https://svc.example.com/run', 'callback', '{}', $2, 120, 60)",
            correlation_id,
            arrived,
        )

    await record_pending("kept")
    schema = await pool.fetchval("SELECT current_schema()")
    assert await migrate(pool, schema, migrations_through(PENDING_SINCE)) == [PENDING_SINCE]
    # A replica of the earlier release, still running during the upgrade, records one more.
    await record_pending("recorded-during-the-upgrade")

    since = {
        row["correlation_id"]: row["pending_since"]
        for row in await pool.fetch("SELECT correlation_id, pending_since FROM dispatch_requests")
    }
    assert since["kept"] == arrived, "kept before: counted from its task's arrival"
    assert utc_now() - since["recorded-during-the-upgrade"] < timedelta(minutes=1), (
        "recorded without it: counted from its insert"
    )


async def test_requests_held_by_an_open_circuit_go_as_soon_as_its_probe_succeeds(
    under_test: DispatcherUnderTest,
) -> None:
    service = HeldService(failing=1)
    dispatcher = with_service(
        under_test,
        service,
        breakers=CircuitBreakers(failure_threshold=1, cool_down=timedelta(seconds=30)),
    )
    first, second, third = task_request(), task_request(), task_request()
    await dispatcher.dispatch(first)  # answered 503: the circuit opens
    await dispatcher.dispatch(second)
    await dispatcher.dispatch(third)
    assert len(service.arrived) == 1, "the others are held"

    under_test.clock.advance(30)
    # The clock stands still from here, and polling alone would look again only 30 s on.
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=30))
    try:
        await service.wait_for(2)  # the probe, which the service holds
        await asyncio.sleep(0.2)
        assert len(service.arrived) == 2, "the other two wait for the probe"
        reasons = [
            (await the_task(under_test, r.task_id)).status_reason for r in (first, second, third)
        ]
        assert sum("circuit open" in (reason or "") for reason in reasons) == 2

        service.answer.set()
        await service.wait_for(4)
        async with asyncio.timeout(10):
            while {await status_of(under_test, r.task_id) for r in (first, second, third)} != {
                "initiated"
            }:
                await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender

    for request in (first, second, third):
        assert (await the_task(under_test, request.task_id)).status_reason is None


async def test_releasing_a_held_request_leaves_it_alone_once_claimed(
    under_test: DispatcherUnderTest,
) -> None:
    task = await a_task_waiting_to_retry(under_test)
    (failed,) = await attempts(under_test, task)
    assert failed.retry_at is not None
    now = under_test.clock.now
    due = "SELECT next_attempt_at FROM dispatch_requests WHERE correlation_id = $1"

    async with under_test.pool.acquire() as conn:
        held = {task.correlation_id: failed.retry_at}
        assert await repo.release_held_requests(conn, held, now=now) == 1
        assert await conn.fetchval(due, task.correlation_id) == now
        (claimed,) = await repo.claim_due_requests(conn, now=now, limit=10)
        leased_until = await conn.fetchval(due, task.correlation_id)
        assert leased_until > now

        # Released as held until `now`, after a sender claimed it: it must not go twice.
        held = {claimed.correlation_id: now}
        assert await repo.release_held_requests(conn, held, now=now) == 0
        assert await conn.fetchval(due, task.correlation_id) == leased_until


async def test_a_failing_server_opens_no_circuit_for_another_port_of_its_host(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher = under_test.another(
        breakers=CircuitBreakers(failure_threshold=1, cool_down=timedelta(seconds=30))
    )
    under_test.service.answer = lambda request: httpx.Response(
        503 if request.url.port == 8443 else 202
    )
    failing = task_request(webhookUrl="https://svc.example.com:8443/generate")
    healthy = task_request(webhookUrl="https://svc.example.com/generate")

    await dispatcher.dispatch(failing)
    await dispatcher.dispatch(healthy)

    assert (await the_task(under_test, healthy.task_id)).status.value == "initiated"
    held = task_request(webhookUrl="https://svc.example.com:8443/generate")
    await dispatcher.dispatch(held)
    reason = (await the_task(under_test, held.task_id)).status_reason or ""
    assert "circuit open for svc.example.com:8443" in reason


async def test_signing_is_per_endpoint_and_the_webhook_id_is_stable(
    under_test: DispatcherUnderTest,
) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    # The official verifier checks the timestamp against the real clock.
    under_test.clock.now = utc_now()
    dispatcher = under_test.another(
        signing=SigningKeys({"https://svc.example.com/": SecretStr(secret)})
    )
    under_test.service.answer = answers(httpx.Response(500), httpx.Response(202))
    request = task_request()
    other = task_request(webhookUrl="https://elsewhere.example.com/run")

    await dispatcher.dispatch(request)
    under_test.clock.advance(5)
    await dispatcher.send_due()
    await dispatcher.dispatch(other)

    signed = [r for r in under_test.service.received if r.url.host == "svc.example.com"]
    assert len(signed) == 2
    for sent in signed:
        Webhook(secret).verify(sent.content, dict(sent.headers))
    assert signed[0].headers["webhook-id"] == signed[1].headers["webhook-id"]
    assert signed[0].headers["webhook-timestamp"] != signed[1].headers["webhook-timestamp"]
    (unsigned,) = [r for r in under_test.service.received if r.url.host != "svc.example.com"]
    assert "webhook-signature" not in unsigned.headers


async def test_an_oversized_sync_answer_fails_the_task(under_test: DispatcherUnderTest) -> None:
    big = {"status": "success", "metadata": {"blob": "x" * 10_000}}
    http = httpx.MockTransport(lambda request: httpx.Response(200, json=big))
    dispatcher = under_test.another(
        webhooks=WebhookClient(
            http, guard=UrlGuard(resolve=resolve_publicly), max_response_bytes=1024
        )
    )
    request = task_request(mode="sync")

    await dispatcher.dispatch(request)
    await dispatcher.send_due()
    await http.aclose()

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    assert "larger than the dispatcher accepts" in (task.status_reason or "")


async def test_a_sync_request_without_an_answer_in_the_task_timeout_fails_without_retry(
    under_test: DispatcherUnderTest,
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    http = httpx.MockTransport(never)
    dispatcher = under_test.another(
        webhooks=WebhookClient(http, guard=UrlGuard(resolve=resolve_publicly))
    )
    request = task_request(mode="sync", timeoutSeconds=1)

    await dispatcher.dispatch(request)
    await dispatcher.send_due()
    await http.aclose()

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    assert "did not answer in time (no answer within 1s)" in (task.status_reason or "")
    assert len(await attempts(under_test, task)) == 1
    async with under_test.pool.acquire() as conn:
        assert await repo.next_request_due(conn) is None


async def test_two_senders_never_send_the_same_due_request_twice(
    under_test: DispatcherUnderTest,
) -> None:
    under_test.service.answer = answers(httpx.Response(503))
    requests = [task_request() for _ in range(30)]
    patient = under_test.another(
        breakers=CircuitBreakers(failure_threshold=1000, cool_down=timedelta(seconds=1))
    )
    for request in requests:
        await patient.dispatch(request)
    assert len(under_test.service.received) == 30
    under_test.service.answer = lambda request: httpx.Response(202)
    under_test.clock.advance(5)
    replicas = [under_test.another() for _ in range(3)]

    claimed = await asyncio.gather(*(replica.send_due(limit=7) for replica in replicas * 3))

    assert sum(claimed) == 30
    retried = [json.loads(r.content)["taskId"] for r in under_test.service.received[30:]]
    assert sorted(retried) == sorted(request.task_id for request in requests)


async def test_a_stopping_sender_hands_its_unfinished_requests_back_at_once(
    under_test: DispatcherUnderTest,
) -> None:
    started = asyncio.Event()

    async def stall(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(60)
        return httpx.Response(200, json={"status": "success"})

    http = httpx.MockTransport(stall)
    dispatcher = under_test.another(
        webhooks=WebhookClient(http, guard=UrlGuard(resolve=resolve_publicly))
    )
    request = task_request(mode="sync", timeoutSeconds=600)
    await dispatcher.dispatch(request)
    sender = asyncio.create_task(dispatcher.run_sender(poll_interval=0.05))
    await asyncio.wait_for(started.wait(), 30)
    async with under_test.pool.acquire() as conn:
        claimed_until = await repo.next_request_due(conn)
    assert claimed_until is not None
    assert claimed_until > under_test.clock.now + timedelta(seconds=600), "claimed for a lease"

    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    await http.aclose()

    async with under_test.pool.acquire() as conn:
        assert await repo.next_request_due(conn) == under_test.clock.now
    assert (await the_task(under_test, request.task_id)).status.value == "pending"


class FailingClient(WebhookClient):
    """A client that fails inside the dispatcher, the same way on every attempt."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, request: object, *, now: object) -> DeliveryResult:
        self.calls += 1
        raise RuntimeError("a failure that recurs on every attempt")


async def test_a_failure_inside_the_dispatcher_is_an_attempt_and_meets_the_attempt_limit(
    under_test: DispatcherUnderTest,
) -> None:
    failing = FailingClient()
    dispatcher = under_test.another(webhooks=failing)
    request = task_request()

    await dispatcher.dispatch(request)
    await run_retries(under_test, dispatcher)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    history = await attempts(under_test, task)
    assert [a.outcome for a in history] == ["failed"] * 6
    assert failing.calls == 6
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert (
        event.reason == "the dispatcher could not send the request (internal error: RuntimeError)"
    )


class BusyOnceClient(WebhookClient):
    """A client whose host has no free slot the first time, then answers as usual."""

    def __init__(self, inner: WebhookClient) -> None:
        self._inner = inner
        self.busy_answers = 0

    async def send(self, request: OutboundRequest, *, now: datetime) -> DeliveryResult:
        if self.busy_answers == 0:
            self.busy_answers += 1
            return DeliveryResult(
                "busy", 0.0, error="every request this host may have is in flight"
            )
        return await self._inner.send(request, now=now)


async def test_a_busy_host_holds_the_task_without_counting_an_attempt_or_a_failure(
    under_test: DispatcherUnderTest,
) -> None:
    breakers = CircuitBreakers(cool_down=timedelta(seconds=30), failure_threshold=1)
    dispatcher = under_test.another(webhooks=BusyOnceClient(under_test.webhooks), breakers=breakers)
    request = task_request()

    await dispatcher.dispatch(request)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "pending"
    assert await attempts(under_test, task) == []
    assert "every request this host may have is in flight" in (task.status_reason or "")
    async with under_test.pool.acquire() as conn:
        due = await repo.next_request_due(conn)
    assert due is not None
    assert 1 <= (due - under_test.clock.now).total_seconds() <= 5
    under_test.clock.now = due
    await dispatcher.send_due()
    task = await the_task(under_test, request.task_id)
    assert task.status.value == "initiated", "a busy host is no failure: its breaker stays shut"
    assert [a.outcome for a in await attempts(under_test, task)] == ["accepted"]


async def test_a_busy_host_past_the_pending_limit_fails_the_task_unsent(
    under_test: DispatcherUnderTest,
) -> None:
    # Every hold for a busy host lasts 1-5 s: with half a second, any is past the limit.
    dispatcher = under_test.another(
        webhooks=BusyOnceClient(under_test.webhooks),
        retry=RetryPolicy(max_pending_seconds=0.5, rng=random.Random(4)),
    )
    request = task_request()

    await dispatcher.dispatch(request)

    task = await the_task(under_test, request.task_id)
    assert task.status.value == "failed"
    assert under_test.service.received == []
    assert task.status_reason == (
        "the external service could not be reached (not sent: every request this host may "
        "have is in flight at svc.example.com:443; not accepted within 0.5s of the task's "
        "arrival)"
    )


async def test_a_sender_whose_claims_fail_keeps_trying_and_sends_once_the_database_answers(
    under_test: DispatcherUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    under_test.service.answer = answers(httpx.Response(503), httpx.Response(202))
    dispatcher = under_test.another(clock=utc_now)
    request = task_request()
    await dispatcher.dispatch(request)
    claim = repo.claim_due_requests
    failures = 0

    async def database_away_twice(conn: object, *, now: datetime, limit: int) -> object:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ConnectionRefusedError("the database is away")
        return await claim(conn, now=now, limit=limit)

    monkeypatch.setattr(repo, "claim_due_requests", database_away_twice)
    sender = asyncio.create_task(
        dispatcher.run_sender(poll_interval=0.05, retry_delays=RetryDelays(0.05, 0.1))
    )
    try:
        for _ in range(200):
            if (await the_task(under_test, request.task_id)).status.value == "initiated":
                break
            assert not sender.done(), "the sender stopped"
            await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
    assert failures == 2
    assert (await the_task(under_test, request.task_id)).status.value == "initiated"


async def test_an_answer_not_recorded_while_the_database_is_away_is_recorded_once_it_answers(
    under_test: DispatcherUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    settle = repo.settle_accepted
    failures = 0

    async def database_away_twice(
        conn: asyncpg.Connection, accepted: Sequence[repo.Acceptance]
    ) -> list[repo.TaskRow]:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ConnectionResetError("the database went away")
        return await settle(conn, accepted)

    monkeypatch.setattr(repo, "settle_accepted", database_away_twice)
    request = task_request()

    await under_test.dispatcher.dispatch(request)

    assert failures == 2
    task = await the_task(under_test, request.task_id)
    assert task.status.value == "initiated"
    # Recorded, not sent again when its lease ran out.
    assert len(under_test.service.received) == 1
    assert [attempt.outcome for attempt in await attempts(under_test, task)] == ["accepted"]
