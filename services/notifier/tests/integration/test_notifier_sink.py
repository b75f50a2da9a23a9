"""The HTTP sink against a real local server that verifies signatures with the official library."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from standardwebhooks import Webhook, WebhookVerificationError
from webhook_tasks_contracts import (
    ChatCommentPosted,
    TaskCompleted,
    TaskProgressed,
    TaskRef,
    Topics,
    notification_event_adapter,
)
from webhook_tasks_notifier import repository
from webhook_tasks_notifier.comment_templates import load_templates
from webhook_tasks_notifier.handlers import LifecycleHandler
from webhook_tasks_notifier.main import serve
from webhook_tasks_notifier.repository import SinkDelivery
from webhook_tasks_notifier.settings import NotifierSettings
from webhook_tasks_notifier.sink import Backoff, HttpSink, create_http_client
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.embedded import free_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import KafkaPublisher, ensure_topics
from webhook_tasks_runtime.outbox import OutboxRelay

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
TASK = TaskRef(task_id="task-1", user_id="owner", project_id="project-1", followers=("ann",))
BACKOFF = Backoff(first=timedelta(seconds=2), longest=timedelta(seconds=5))


class FakeClock:
    def __init__(self) -> None:
        # Near real time: the receiver checks the signed timestamp against its own clock.
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Receiver:
    """A chat system's endpoint: verifies each request, answers what the test says."""

    url: str
    answers: list[int] = field(default_factory=list)
    verified: list[tuple[str, Any]] = field(default_factory=list)
    accepted: list[Any] = field(default_factory=list)
    """The events answered with a 2xx, in the order they were answered: what a chat shows."""
    refused: int = 0
    hold_first: asyncio.Event | None = None
    """When set, the next request is answered only once this event is set."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    most_in_flight_per_comment: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/hooks/chat")
    verifier = Webhook(SECRET)
    in_flight: dict[int | None, int] = {}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            state.refused += 1
            return web.Response(status=401)
        event = notification_event_adapter.validate_json(body)
        comment_id = getattr(event, "comment_id", None)
        in_flight[comment_id] = in_flight.get(comment_id, 0) + 1
        if comment_id is not None:
            state.most_in_flight_per_comment = max(
                state.most_in_flight_per_comment, in_flight[comment_id]
            )
        state.arrived.set()
        try:
            if state.hold_first is not None:
                held, state.hold_first = state.hold_first, None
                await held.wait()
        finally:
            in_flight[comment_id] -= 1
        status = state.answers.pop(0) if state.answers else 204
        state.verified.append((request.headers["webhook-id"], event))
        if 200 <= status < 300:
            state.accepted.append(event)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hooks/chat", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def pool(infrastructure: Infrastructure, unique_schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=4)
    await migrate(
        pool, unique_schema, runtime_migrations() + load_migrations("webhook_tasks_notifier")
    )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


def sink_for(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    url: str,
    clock: FakeClock,
    *,
    secret: str = SECRET,
    max_attempts: int = 5,
) -> HttpSink:
    return HttpSink(
        pool, http, url=url, secret=secret, clock=clock, backoff=BACKOFF, max_attempts=max_attempts
    )


def handler_for(
    pool: asyncpg.Pool,
    infrastructure: Infrastructure,
    schema: str,
    topics: Topics,
    sink: HttpSink | None,
    clock: FakeClock,
) -> LifecycleHandler:
    # The relay is only woken, never run: Kafka is not what these tests are about.
    publisher = KafkaPublisher.create(
        infrastructure.kafka_bootstrap_servers, enable_idempotence=False, client_id="test"
    )
    return LifecycleHandler(
        pool=pool,
        relay=OutboxRelay(pool, publisher, schema=schema),
        templates=load_templates(),
        topics=topics,
        sink=sink,
        clock=clock,
    )


HandlerWith = Callable[[HttpSink | None], LifecycleHandler]


@pytest.fixture
def handler_with(
    pool: asyncpg.Pool,
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
    clock: FakeClock,
) -> HandlerWith:
    """Return a maker of the lifecycle handler that queues deliveries for a sink."""
    return lambda sink: handler_for(pool, infrastructure, unique_schema, unique_topics, sink, clock)


def progressed(progress: float, at: datetime) -> TaskProgressed:
    return TaskProgressed(
        correlation_id="corr-1", task=TASK, deadline_at=at, progress=progress, occurred_at=at
    )


def completed() -> TaskCompleted:
    return TaskCompleted(
        correlation_id="corr-1",
        task=TASK,
        result_url="https://cdn.example.com/video.mp4",
        metadata={"title": "Video"},
    )


async def test_each_comment_and_notification_is_posted_once_signed(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    await handler.handle(
        TaskProgressed(correlation_id="corr-1", task=TASK, deadline_at=clock.now, progress=40)
    )
    # Sent before the task ends: a text still pending then would be superseded by the last one.
    assert await sink.deliver_due() == 1
    await handler.handle(completed())
    await handler.handle(completed())  # redelivered: nothing new to announce

    assert await sink.deliver_due() == 4
    assert await sink.deliver_due() == 0

    assert receiver.refused == 0
    # Posted concurrently, so in no particular order.
    received = sorted(
        (type(event).__name__, event.kind, getattr(event, "user_id", ""), webhook_id, event)
        for webhook_id, event in receiver.verified
    )
    assert [entry[:3] for entry in received] == [
        ("ChatCommentPosted", "progress", ""),
        ("ChatCommentPosted", "progress", ""),  # its last text, once the task completed
        ("ChatCommentPosted", "result", ""),
        ("UserNotified", "result", "ann"),
        ("UserNotified", "result", "owner"),
    ]
    assert all(webhook_id == str(event.event_id) for *_, webhook_id, event in received)
    assert isinstance(received[0][4], ChatCommentPosted)
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0


async def test_a_failing_sink_is_retried_with_growing_delays(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    await handler.handle(completed())
    receiver.answers = [503, 503, 503, 500, 500, 500]  # two rounds fail for all three

    assert await sink.deliver_due() == 0
    clock.advance(1.9)
    assert await sink.deliver_due() == 0  # first retry waits 2 s
    clock.advance(0.1)
    assert await sink.deliver_due() == 0
    clock.advance(3.9)
    assert await sink.deliver_due() == 0  # then 4 s
    clock.advance(0.1)
    assert await sink.deliver_due() == 3

    ids = [webhook_id for webhook_id, _ in receiver.verified]
    assert len(ids) == 9
    assert len(set(ids)) == 3  # every retry carries the same webhook-id
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0


async def test_a_receiver_dripping_its_answer_is_a_failed_attempt_once_the_timeout_passes(
    pool: asyncpg.Pool,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    # Each byte comes well within httpx's per-read timeout; the whole answer would take 30 s.
    async def drip(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        for _ in range(100):
            await response.write(b".")
            await asyncio.sleep(0.3)
        return response

    app = web.Application()
    app.router.add_post("/hooks/chat", drip)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with create_http_client(timeout_seconds=1) as http:
            sink = HttpSink(
                pool,
                http,
                url=f"http://127.0.0.1:{port}/hooks/chat",
                secret=SECRET,
                clock=clock,
                backoff=BACKOFF,
                timeout=1.0,
            )
            handler = handler_with(sink)
            await handler.handle(completed())

            assert await asyncio.wait_for(sink.deliver_due(), 10) == 0
    finally:
        await runner.cleanup()

    rows = await pool.fetch("SELECT attempts, failed_at, last_error FROM sink_deliveries")
    assert [(row["attempts"], row["failed_at"]) for row in rows] == [(1, None)] * 3
    assert {row["last_error"] for row in rows} == {"TimeoutError: no whole answer within 1 s"}
    assert await attempts_and_due(pool) == [(1, clock.now + BACKOFF.first)] * 3


class FlakyPool:
    """A pool whose acquire() fails as while PostgreSQL is away, for the calls numbered."""

    def __init__(self, pool: asyncpg.Pool, failing: set[int]) -> None:
        self._pool = pool
        self._failing = failing
        self.calls = 0

    def acquire(self) -> Any:
        self.calls += 1
        if self.calls in self._failing:
            raise ConnectionRefusedError(111, "Connect call failed")
        return self._pool.acquire()


async def test_a_delivery_posted_while_postgresql_goes_away_is_recorded_once_it_is_back(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    await handler.handle(completed())
    # Call 1 claims the three deliveries; the first two records after their POSTs fail.
    flaky = FlakyPool(pool, failing={2, 3})
    sink = HttpSink(
        flaky,
        http,
        url=receiver.url,
        secret=SECRET,
        clock=clock,
        backoff=BACKOFF,
    )

    assert await sink.deliver_due() == 3

    assert flaky.calls >= 6
    assert len(receiver.verified) == 3
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0
    clock.advance(120)  # past the lease: nothing is posted again
    assert await sink.deliver_due() == 0
    assert len(receiver.verified) == 3


async def test_an_unreachable_sink_is_given_up_after_the_last_attempt(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    handler_with: HandlerWith,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hooks"
    sink = sink_for(pool, http, nobody, clock, max_attempts=3)
    handler = handler_with(sink)
    await handler.handle(completed())
    before = sink_attempts()

    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            await sink.deliver_due()
            clock.advance(BACKOFF.longest.total_seconds())

    # What /metrics shows, for an alert on deliveries given up.
    after = sink_attempts()
    assert {outcome: after[outcome] - before[outcome] for outcome in after} == {
        "delivered": 0,
        "failed": 6,
        "given_up": 3,
    }

    rows = await pool.fetch("SELECT attempts, failed_at, last_error FROM sink_deliveries")
    assert [row["attempts"] for row in rows] == [3, 3, 3]
    assert all(row["failed_at"] is not None for row in rows)
    assert all(row["last_error"].startswith("ConnectError") for row in rows)
    given_up = [r for r in caplog.records if r.getMessage() == "sink delivery given up"]
    assert len(given_up) == 3


def sink_attempts() -> dict[str, float]:
    """Return the sink's attempts so far by outcome, as /metrics shows them."""
    return {
        outcome: REGISTRY.get_sample_value(
            "webhook_tasks_notifier_sink_attempts_total", {"outcome": outcome}
        )
        or 0.0
        for outcome in ("delivered", "failed", "given_up")
    }


async def test_a_request_signed_with_another_secret_is_refused_by_the_receiver(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    sink = sink_for(pool, http, receiver.url, clock, secret=other)
    handler = handler_with(sink)
    await handler.handle(completed())

    assert await sink.deliver_due() == 0
    assert receiver.refused == 3
    assert receiver.verified == []


async def test_without_a_sink_nothing_is_queued_for_one(
    pool: asyncpg.Pool,
    clock: FakeClock,
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
) -> None:
    handler = handler_for(pool, infrastructure, unique_schema, unique_topics, None, clock)
    await handler.handle(completed())

    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 3


async def insert_deliveries(
    pool: asyncpg.Pool, rows: list[tuple[str, datetime | None, datetime]]
) -> None:
    """Insert deliveries as (correlation id, failed_at, next_attempt_at)."""
    await pool.executemany(
        """
        INSERT INTO sink_deliveries
            (event_id, correlation_id, payload, attempts, next_attempt_at, failed_at, created_at)
        VALUES (gen_random_uuid(), $1, '{}', 1, $3, $2, $3)
        """,
        rows,
    )


async def remaining_deliveries(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT correlation_id FROM sink_deliveries ORDER BY correlation_id")
    return [row["correlation_id"] for row in rows]


async def test_deliveries_given_up_longer_ago_than_the_retention_are_pruned_in_batches(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retention = timedelta(days=7)
    cutoff = clock.now - retention
    long_ago = cutoff - timedelta(days=30)
    await insert_deliveries(
        pool,
        [(f"old-{i}", cutoff - timedelta(seconds=i + 1), long_ago) for i in range(5)]
        + [
            ("recent", cutoff + timedelta(seconds=1), long_ago),
            # Still being retried, however old: never pruned.
            ("pending", None, long_ago),
        ],
    )
    sink = HttpSink(
        pool,
        http,
        url="http://127.0.0.1:9/unused",
        secret=SECRET,
        clock=clock,
        retention=retention,
        prune_batch_size=2,
    )

    with caplog.at_level(logging.INFO, logger="webhook_tasks_notifier.sink"):
        assert await sink.prune_finished() == 5
        assert await sink.prune_finished() == 0

    assert await remaining_deliveries(pool) == ["pending", "recent"]
    logged = [r for r in caplog.records if r.getMessage() == "pruned finished sink deliveries"]
    assert [getattr(record, "count", None) for record in logged] == [5]

    clock.advance(2)
    assert await sink.prune_finished() == 1
    assert await remaining_deliveries(pool) == ["pending"]


async def test_the_delivery_loop_prunes_at_start_and_then_every_interval(
    pool: asyncpg.Pool, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    retention = timedelta(days=7)
    later = clock.now + timedelta(days=1)  # the pending row stays not due: nothing is posted
    await insert_deliveries(
        pool,
        [
            ("old", clock.now - retention - timedelta(seconds=1), later),
            ("recent", clock.now - retention + timedelta(minutes=30), later),
            ("pending", None, later),
        ],
    )
    sink = HttpSink(
        pool,
        http,
        url="http://127.0.0.1:9/unused",
        secret=SECRET,
        clock=clock,
        retention=retention,
        prune_interval=timedelta(hours=1),
        idle_interval=0.01,
    )

    async def until_remaining(expected: list[str]) -> None:
        deadline = time.monotonic() + 10
        while await remaining_deliveries(pool) != expected:
            assert time.monotonic() < deadline, await remaining_deliveries(pool)
            await asyncio.sleep(0.02)

    loop = asyncio.create_task(sink.run())
    try:
        await until_remaining(["pending", "recent"])
        clock.advance(59 * 60)  # "recent" is now past the retention, but no prune is due yet
        await asyncio.sleep(0.2)
        assert await remaining_deliveries(pool) == ["pending", "recent"]
        clock.advance(60)
        await until_remaining(["pending"])
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_the_running_service_posts_outcomes_to_a_configured_sink(
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
    receiver: Receiver,
) -> None:
    settings = NotifierSettings(
        database_url=infrastructure.database_url,
        database_schema=unique_schema,
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
        topic_prefix=unique_topics.prefix,
        environment="test",
        notification_sink_url=receiver.url,
        notification_sink_secret=SECRET,
    )
    await ensure_topics(infrastructure.kafka_bootstrap_servers, unique_topics.all())
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            unique_topics.task_lifecycle,
            completed().model_dump_json().encode(),
            key=b"corr-1",
        )
        deadline = time.monotonic() + 60
        while len(receiver.verified) < 3:
            assert not service.done(), "the notifier stopped by itself"
            assert time.monotonic() < deadline, f"only {len(receiver.verified)} posts arrived"
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(service, timeout=30)

    assert receiver.refused == 0
    assert sorted(type(event).__name__ for _, event in receiver.verified) == [
        "ChatCommentPosted",
        "UserNotified",
        "UserNotified",
    ]


async def test_a_stop_hands_back_the_deliveries_being_posted_due_at_once(
    pool: asyncpg.Pool,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    arrived = asyncio.Event()

    async def hold(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async with httpx.AsyncClient(transport=httpx.MockTransport(hold)) as held:
        sink = sink_for(pool, held, "https://chat.example/hooks", clock)
        handler = handler_with(sink)
        await handler.handle(completed())
        await stop_sink_once(sink, arrived)

    # Due at once for the next process, not once their lease ran out; no attempt counted.
    assert await attempts_and_due(pool) == [(0, clock.now)] * 3


async def test_a_stop_that_interrupts_a_claim_hands_the_claimed_deliveries_back(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    await handler.handle(completed())
    claimed = asyncio.Event()
    claim = repository.claim_sink_deliveries

    async def claim_then_stall(*args: Any) -> list[SinkDelivery]:
        # The rows are leased on the server; the stop comes before the answer is read.
        taken = await claim(*args)
        claimed.set()
        await asyncio.sleep(0.5)
        return taken

    monkeypatch.setattr(repository, "claim_sink_deliveries", claim_then_stall)
    await stop_sink_once(sink, claimed)

    assert await attempts_and_due(pool) == [(0, clock.now)] * 3
    assert receiver.verified == []


async def stop_sink_once(sink: HttpSink, reached: asyncio.Event) -> None:
    """Run the sink until `reached` is set, then stop it as a SIGTERM would (cancel)."""
    running = asyncio.create_task(sink.run())
    await asyncio.wait_for(reached.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def attempts_and_due(pool: asyncpg.Pool) -> list[tuple[int, datetime]]:
    """Return each sink delivery's attempts and when it is next due."""
    rows = await pool.fetch("SELECT attempts, next_attempt_at FROM sink_deliveries")
    return [(row["attempts"], row["next_attempt_at"]) for row in rows]


async def test_while_rounds_fail_new_comments_do_not_start_more_of_them(
    pool: asyncpg.Pool, http: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    # Each comment wakes the sink; while PostgreSQL is away each round fails, and a round per
    # comment would write a line per comment.
    away = FlakyPool(pool, failing=set(range(1, 100_000)))
    sink = HttpSink(
        away,
        http,
        url=receiver.url,
        secret=SECRET,
        clock=clock,
        idle_interval=0.1,
    )
    running = asyncio.create_task(sink.run())
    try:
        for _ in range(150):
            sink.wake()
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    # Backing off from 0.1 s, doubling: 0.1 + 0.2 + 0.4 + 0.8 covers the 1.5 s or so.
    assert away.calls <= 8


async def test_the_services_own_http_client_posts_signed_deliveries(
    pool: asyncpg.Pool,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    async with create_http_client(timeout_seconds=5) as http:
        sink = sink_for(pool, http, receiver.url, clock)
        handler = handler_with(sink)
        await handler.handle(completed())

        assert await sink.deliver_due() == 3

    assert receiver.refused == 0
    assert len(receiver.accepted) == 3
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0


async def test_a_post_the_services_transport_refuses_is_a_failed_attempt_given_up_and_pruned(
    pool: asyncpg.Pool,
    receiver: Receiver,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    handler_with: HandlerWith,
) -> None:
    # Credentials in the URL become an Authorization header, which the aiohttp transport
    # refuses with a ValueError (not an httpx error) before anything is sent, on every POST.
    url = receiver.url.replace("http://", "http://sinkbot:hunter2-pw@") + "?key=k3y-query"
    async with create_http_client(timeout_seconds=5) as http:
        sink = sink_for(pool, http, url, clock, max_attempts=3)
        handler = handler_with(sink)
        await handler.handle(completed())

        with caplog.at_level(logging.INFO):
            for _ in range(5):
                assert await sink.deliver_due() == 0
                clock.advance(BACKOFF.longest.total_seconds())

    rows = await pool.fetch("SELECT attempts, failed_at, last_error FROM sink_deliveries")
    assert [row["attempts"] for row in rows] == [3, 3, 3]
    assert all(row["failed_at"] is not None for row in rows)
    assert all(
        row["last_error"].startswith("ValueError: Cannot combine AUTHORIZATION header")
        for row in rows
    )
    given_up = [r for r in caplog.records if r.getMessage() == "sink delivery given up"]
    assert len(given_up) == 3
    logged = " ".join(str(vars(record)) for record in caplog.records)
    for secret in ("hunter2-pw", "sinkbot", "k3y-query"):
        assert secret not in logged
        assert all(secret not in row["last_error"] for row in rows)
    assert receiver.verified == []
    # Given up on, so pruned once past the retention, as any other.
    clock.advance(timedelta(days=7).total_seconds() + 1)
    assert await sink.prune_finished() == 3


async def test_an_unexpected_error_while_posting_is_recorded_without_the_urls_secrets(
    pool: asyncpg.Pool,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    url = "https://chat.example/hooks/T0/tok3n-path?key=k3y-query"

    async def broken(request: httpx.Request) -> httpx.Response:
        query = request.url.query.decode()
        raise RuntimeError(f"no route for {request.url} ({request.url.path}, {query})")

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
        sink = sink_for(pool, http, url, clock)
        handler = handler_with(sink)
        await handler.handle(completed())

        assert await sink.deliver_due() == 0

    rows = await pool.fetch("SELECT attempts, failed_at, last_error FROM sink_deliveries")
    assert [(row["attempts"], row["failed_at"]) for row in rows] == [(1, None)] * 3
    assert {row["last_error"] for row in rows} == {
        "RuntimeError: no route for [redacted] ([redacted], [redacted])"
    }
    assert await attempts_and_due(pool) == [(1, clock.now + BACKOFF.first)] * 3


def progress_texts(events: list[Any]) -> list[tuple[int | None, str]]:
    """Return (revision, text) of each progress comment text among `events`, in order."""
    return [
        (event.revision, event.text)
        for event in events
        if isinstance(event, ChatCommentPosted) and event.kind == "progress"
    ]


ENDED = "**No longer in progress**: the task completed. The outcome is in the comment below."


async def test_a_retried_stale_edit_never_reaches_the_chat_after_the_newer_text(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    await handler.handle(progressed(40, clock.now))
    assert await sink.deliver_due() == 1
    receiver.answers = [503]  # once, on the 90% update
    await handler.handle(progressed(90, clock.now + timedelta(seconds=5)))
    assert await sink.deliver_due() == 0
    await handler.handle(completed())  # while the 90% update waits for its retry

    await sink.deliver_due()
    for _ in range(6):  # well past every retry the 90% update could have
        clock.advance(BACKOFF.longest.total_seconds())
        await sink.deliver_due()

    assert progress_texts(receiver.accepted) == [(1, "**In progress** 40%"), (3, ENDED)]
    # A chat applying each edit whose revision is greater than the last it showed.
    shown: dict[int, tuple[int, str]] = {}
    for event in receiver.accepted:
        if isinstance(event, ChatCommentPosted):
            assert event.revision is not None
            if event.revision > shown.get(event.comment_id, (0, ""))[0]:
                shown[event.comment_id] = (event.revision, event.text)
    progress_id = next(
        event.comment_id
        for event in receiver.accepted
        if isinstance(event, ChatCommentPosted) and event.kind == "progress"
    )
    assert shown[progress_id] == (3, ENDED)
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0


async def test_of_a_comments_pending_texts_only_the_newest_is_sent(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    handler_with: HandlerWith,
) -> None:
    sink = sink_for(pool, http, receiver.url, clock)
    handler = handler_with(sink)
    for step, percent in enumerate((10, 20, 30)):
        await handler.handle(progressed(percent, clock.now + timedelta(seconds=step)))

    with caplog.at_level(logging.INFO, logger="webhook_tasks_notifier.sink"):
        assert await sink.deliver_due() == 1

    assert progress_texts(receiver.accepted) == [(3, "**In progress** 30%")]
    assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0
    dropped = [r for r in caplog.records if r.getMessage().startswith("older texts")]
    assert [getattr(record, "superseded", None) for record in dropped] == [2]


async def test_a_comment_never_has_two_texts_in_flight_even_across_replicas(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    infrastructure: Infrastructure,
    unique_schema: str,
    unique_topics: Topics,
) -> None:
    first, second = (
        sink_for(pool, http, receiver.url, clock),
        sink_for(pool, http, receiver.url, clock),
    )
    handler = handler_for(pool, infrastructure, unique_schema, unique_topics, first, clock)
    await handler.handle(progressed(10, clock.now))
    held = receiver.hold_first = asyncio.Event()
    posting = asyncio.create_task(first.deliver_due())
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        await handler.handle(progressed(20, clock.now + timedelta(seconds=5)))

        assert await second.deliver_due() == 0  # the 10% text is still in flight
        async with pool.acquire() as conn:
            # Nothing to take before that text leaves flight: an idle loop does not spin.
            upcoming = await repository.next_sink_attempt(conn)
        assert upcoming is not None
        assert upcoming > clock.now
    finally:
        held.set()
        delivered_first = await asyncio.wait_for(posting, 10)

    assert delivered_first == 1
    assert await second.deliver_due() == 1
    assert progress_texts(receiver.accepted) == [
        (1, "**In progress** 10%"),
        (2, "**In progress** 20%"),
    ]
    assert receiver.most_in_flight_per_comment == 1


async def test_texts_queued_before_revisions_existed_are_superseded_by_newer_ones(
    infrastructure: Infrastructure,
    unique_schema: str,
    http: httpx.AsyncClient,
    receiver: Receiver,
    clock: FakeClock,
    unique_topics: Topics,
) -> None:
    migrations = runtime_migrations() + load_migrations("webhook_tasks_notifier")
    earlier = [m for m in migrations if not m.name.endswith("0005_comment_revisions.sql")]
    assert len(earlier) == len(migrations) - 1
    pool = await create_pool(infrastructure.database_url, unique_schema, max_size=4)
    try:
        await migrate(pool, unique_schema, earlier)
        # As the notifier left them: a progress comment whose 90% update waits for a retry.
        comment_id = await pool.fetchval(
            """
            INSERT INTO comments (correlation_id, task_id, project_id, kind, text,
                                  source_event_id, source_occurred_at)
            VALUES ('corr-1', 'task-1', 'project-1', 'progress', '**In progress** 90%',
                    gen_random_uuid(), now())
            RETURNING id
            """
        )
        stale = ChatCommentPosted(
            correlation_id="corr-1",
            task=TASK,
            comment_id=comment_id,
            kind="progress",
            text="**In progress** 90%",
            edited=True,
        )
        await pool.execute(
            """
            INSERT INTO sink_deliveries
                (event_id, correlation_id, payload, attempts, next_attempt_at, last_error)
            VALUES ($1, 'corr-1', $2, 1, $3, 'HTTP 503')
            """,
            stale.event_id,
            stale.model_dump_json(exclude={"revision"}).encode(),
            clock.now + timedelta(seconds=2),
        )
        await migrate(pool, unique_schema, migrations)
        sink = sink_for(pool, http, receiver.url, clock)
        # On this test's own pool: the fixture's would migrate the schema whole first.
        handler = handler_for(pool, infrastructure, unique_schema, unique_topics, sink, clock)
        await handler.handle(completed())

        assert await sink.deliver_due() == 4
        clock.advance(60)
        assert await sink.deliver_due() == 0
        assert progress_texts(receiver.accepted) == [(2, ENDED)]
        assert await pool.fetchval("SELECT count(*) FROM sink_deliveries") == 0
    finally:
        await pool.close()
