"""The dispatcher's decisions on a real PostgreSQL: one dispatch, one outcome, all recorded."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from webhook_tasks_contracts import (
    CallbackReceived,
    DeadlineReached,
    LifecycleEvent,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskMetadata,
    TaskProgressed,
    TaskRequested,
    TaskResultArrivedLate,
    VerifiedToken,
    lifecycle_event_adapter,
)
from webhook_tasks_dispatcher import repository as repo
from webhook_tasks_dispatcher.client import DeliveryResult
from webhook_tasks_dispatcher.domain import TaskStatus
from webhook_tasks_dispatcher.service import CLOCK_SKEW_ALLOWANCE
from webhook_tasks_runtime.catch_up import GroupBehindError

from .conftest import DispatcherUnderTest

pytestmark = pytest.mark.integration

SECRET = "Bearer integration-secret"


def task_request(**metadata: object) -> TaskRequested:
    return TaskRequested(
        task_id=f"task-{uuid.uuid4().hex[:8]}",
        user_id="user-1",
        project_id="project-1",
        prompt="make a video",
        followers=["user-2", "user-2"],
        task_metadata=TaskMetadata.model_validate(
            {
                "isWebhookTask": True,
                "webhookUrl": "https://svc.example.com/generate",
                "webhookAuth": SECRET,
                "webhookParams": {"quality": "high"},
                "timeoutSeconds": 60,
                **metadata,
            }
        ),
    )


async def lifecycle(under_test: DispatcherUnderTest) -> list[object]:
    return [
        lifecycle_event_adapter.validate_json(payload)
        for topic, _key, payload in await under_test.outbox()
        if topic == under_test.topics.task_lifecycle
    ]


async def dispatched(under_test: DispatcherUnderTest) -> tuple[TaskRequested, repo.TaskRow]:
    request = task_request()
    await under_test.dispatcher.dispatch(request)
    async with under_test.pool.acquire() as conn:
        (task,) = await repo.find_tasks(conn, request.task_id)
    return request, task


def callback(correlation_id: str, status: str, **fields: object) -> CallbackReceived:
    return CallbackReceived(correlation_id=correlation_id, status=status, **fields)


async def test_a_task_is_dispatched_in_the_product_summary_format(
    under_test: DispatcherUnderTest,
) -> None:
    request, task = await dispatched(under_test)

    (sent,) = under_test.service.received
    body = json.loads(sent.content)
    assert sent.headers["authorization"] == SECRET
    assert body["correlationId"] == task.correlation_id
    # The token carries the credential's fingerprints, so the gateway can mask an echo of it.
    echoes = under_test.tokens.fingerprints.of(SecretStr(SECRET))
    assert body["callbackUrl"] == under_test.tokens.callback_url(
        "https://gateway.example.com", task.correlation_id, echoes=echoes
    )
    token = body["callbackUrl"].rpartition("/")[2]
    assert under_test.tokens.verified(task.correlation_id, token) == VerifiedToken("", echoes)
    assert {key: body[key] for key in ("prompt", "taskId", "userId", "projectId", "quality")} == {
        "prompt": "make a video",
        "taskId": request.task_id,
        "userId": "user-1",
        "projectId": "project-1",
        "quality": "high",
    }
    assert task.status.value == "initiated"
    assert task.ack_status == "accepted"
    assert task.deadline_at == under_test.clock.now + timedelta(seconds=60)
    assert task.followers == ["user-2"]
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskDispatched)
    assert event.deadline_at == task.deadline_at
    assert event.task.followers == ("user-2",)
    assert SECRET not in str(await under_test.outbox())


async def test_tasks_that_are_not_webhook_tasks_are_ignored(
    under_test: DispatcherUnderTest,
) -> None:
    request = task_request().model_copy(update={"task_metadata": TaskMetadata()})

    await under_test.dispatcher.dispatch(request)

    assert under_test.service.received == []
    assert await under_test.outbox() == []


async def test_a_duplicate_task_event_never_dispatches_again(
    under_test: DispatcherUnderTest,
) -> None:
    request = task_request()

    await asyncio.gather(*(under_test.dispatcher.dispatch(request) for _ in range(5)))
    under_test.clock.advance(3600)
    await under_test.dispatcher.dispatch(request)

    assert len(under_test.service.received) == 1
    assert len(await lifecycle(under_test)) == 1


async def test_tasks_handled_together_are_each_recorded_sent_and_announced_once(
    under_test: DispatcherUnderTest,
) -> None:
    requests = [task_request() for _ in range(40)]

    await asyncio.gather(*(under_test.dispatcher.dispatch(request) for request in requests))

    assert len(under_test.service.received) == 40
    events = await lifecycle(under_test)
    dispatched = [event for event in events if isinstance(event, TaskDispatched)]
    assert dispatched == events
    assert sorted(event.task.task_id for event in dispatched) == sorted(
        request.task_id for request in requests
    )
    async with under_test.pool.acquire() as conn:
        for request in requests:
            (task,) = await repo.find_tasks(conn, request.task_id)
            assert task.status.value == "initiated"
            assert task.followers == ["user-2"]
            assert task.ack_status == "accepted"
            (attempt,) = await repo.attempts_for(conn, task.correlation_id)
            assert (attempt.attempt, attempt.outcome, attempt.status_code) == (1, "accepted", 200)
        assert await conn.fetchval("SELECT count(*) FROM dispatch_requests") == 0


async def test_a_task_the_database_refuses_fails_alone_and_its_batch_still_goes_out(
    under_test: DispatcherUnderTest,
) -> None:
    good = [task_request() for _ in range(3)]
    bad = task_request().model_copy(update={"task_id": "nul\x00byte"})

    results = await asyncio.gather(
        *(under_test.dispatcher.dispatch(request) for request in [*good, bad]),
        return_exceptions=True,
    )

    assert results[:3] == [None, None, None]
    assert isinstance(results[3], Exception)
    assert len(under_test.service.received) == 3
    assert len(await lifecycle(under_test)) == 3


async def test_a_task_abandoned_mid_dispatch_is_sent_once_more_after_its_lease(
    under_test: DispatcherUnderTest,
) -> None:
    def crash(request: httpx.Request) -> httpx.Response:
        raise asyncio.CancelledError  # the process died while the request was in flight

    request = task_request()
    under_test.service.answer = crash
    with pytest.raises(asyncio.CancelledError):
        await under_test.dispatcher.dispatch(request)
    under_test.service.answer = lambda r: httpx.Response(200, json={"status": "accepted"})

    await under_test.dispatcher.dispatch(request)  # redelivered while the lease still holds
    assert await under_test.dispatcher.send_due() == 0, "nobody sends while the lease holds"
    assert len(under_test.service.received) == 1
    under_test.clock.advance(61)
    await under_test.dispatcher.dispatch(request)  # a redelivery never sends again itself
    assert len(under_test.service.received) == 1
    assert await under_test.dispatcher.send_due() == 1  # the sender takes the abandoned request

    assert len(under_test.service.received) == 2
    bodies = {json.loads(sent.content)["correlationId"] for sent in under_test.service.received}
    assert len(bodies) == 1, "a retry keeps the correlation id"
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskDispatched)


@pytest.mark.parametrize(
    ("answer", "cause", "reason"),
    [
        (lambda r: httpx.Response(401, text="bad key"), "dispatch_rejected", "HTTP 401"),
        (lambda r: httpx.Response(422, text="bad input"), "dispatch_rejected", "HTTP 422"),
    ],
)
async def test_a_client_error_fails_the_task_at_once(
    under_test: DispatcherUnderTest,
    answer: Callable[[httpx.Request], httpx.Response],
    cause: str,
    reason: str,
) -> None:
    under_test.service.answer = answer

    _, task = await dispatched(under_test)

    assert task.status.value == "failed"
    (event,) = await lifecycle(under_test)
    assert isinstance(event, TaskFailed)
    assert event.cause == cause
    assert reason in event.reason
    async with under_test.pool.acquire() as conn:
        (attempt,) = await repo.attempts_for(conn, task.correlation_id)
    assert attempt.outcome == ("rejected" if cause == "dispatch_rejected" else "unreachable")
    assert SECRET not in str(await under_test.outbox())


async def test_success_callback_completes_once_and_later_inputs_are_recorded_not_applied(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    success = callback(
        task.correlation_id, "success", result_url="https://cdn/x.mp4", metadata={"title": "X"}
    )

    await under_test.dispatcher.apply_callback(success)
    await under_test.dispatcher.apply_callback(success)  # redelivery of the same event
    await under_test.dispatcher.apply_callback(callback(task.correlation_id, "error", error="late"))
    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    )

    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [TaskDispatched, TaskCompleted]
    completed = events[1]
    assert isinstance(completed, TaskCompleted)
    assert completed.result_url == "https://cdn/x.mp4"
    assert completed.metadata == {"title": "X"}
    async with under_test.pool.acquire() as conn:
        history = await repo.history_for(conn, task.correlation_id)
        (row,) = await repo.find_tasks(conn, task.correlation_id)
    assert [entry.outcome for entry in history] == ["applied", "ignored", "ignored"]
    assert "already completed" in (history[1].detail or "")
    assert (history[1].detail or "").endswith("it said: error 'late'"), "kept for the operator"
    assert row.status.value == "completed"


async def test_a_callback_for_an_unknown_task_is_recorded_and_changes_nothing(
    under_test: DispatcherUnderTest,
) -> None:
    await under_test.dispatcher.apply_callback(callback("no-such-task", "success"))

    assert await lifecycle(under_test) == []
    async with under_test.pool.acquire() as conn:
        (entry,) = await repo.history_for(conn, "no-such-task")
    assert "unknown correlation id" in (entry.detail or "")


async def test_a_callback_before_the_acknowledgement_still_wins(
    under_test: DispatcherUnderTest,
) -> None:
    request = task_request()
    holder: dict[str, object] = {}

    def answer_after_calling_back(sent: httpx.Request) -> httpx.Response:
        holder["cid"] = json.loads(sent.content)["correlationId"]
        return httpx.Response(200, json={"status": "accepted"})

    under_test.service.answer = answer_after_calling_back
    original = under_test.dispatcher._settle_dispatch

    async def settle_late(
        pending: repo.PendingRequest,
        started: datetime,
        result: DeliveryResult,
        *,
        give_up: bool = False,
    ) -> None:
        # The callback lands between the external service's 2xx and our commit.
        await under_test.dispatcher.apply_callback(callback(str(holder["cid"]), "success"))
        await original(pending, started, result, give_up=give_up)

    # Slowed down on purpose, so the callback lands first.
    under_test.dispatcher._settle_dispatch = settle_late  # type: ignore[method-assign]
    await under_test.dispatcher.dispatch(request)

    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [TaskCompleted]


async def test_deadline_expires_an_open_task_but_not_after_progress_moved_it(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    old_deadline = task.deadline_at
    assert old_deadline is not None

    under_test.clock.advance(30)
    await under_test.dispatcher.apply_callback(
        callback(task.correlation_id, "progress", progress=50, occurred_at=under_test.clock.now)
    )
    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=old_deadline)
    )
    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [TaskDispatched, TaskProgressed]
    progressed = events[1]
    assert isinstance(progressed, TaskProgressed)
    assert progressed.deadline_at == old_deadline + timedelta(seconds=30)

    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=progressed.deadline_at)
    )
    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [TaskDispatched, TaskProgressed, TaskExpired]


@pytest.mark.parametrize("applied_late_by", [0, 600])
async def test_a_heartbeat_extends_from_when_the_gateway_took_it_however_late_it_is_applied(
    under_test: DispatcherUnderTest, applied_late_by: int
) -> None:
    # Timeout 60 s. The gateway takes a heartbeat 30 s in (deadline now 90 s in) and a success
    # 100 s in: past that deadline, whether the dispatcher ran throughout or was stopped (or
    # its callbacks consumer lagged) for ten minutes. The outcome must not depend on which.
    _, task = await dispatched(under_test)
    assert task.deadline_at is not None
    sent_at = task.deadline_at - timedelta(seconds=60)
    heartbeat = callback(
        task.correlation_id, "progress", progress=10, occurred_at=sent_at + timedelta(seconds=30)
    )
    success = callback(
        task.correlation_id,
        "success",
        result_url="https://cdn.example.com/r.mp4",
        occurred_at=sent_at + timedelta(seconds=100),
    )
    dispatcher = under_test.dispatcher

    under_test.clock.now = heartbeat.occurred_at + timedelta(seconds=applied_late_by)
    await dispatcher.apply_callback(heartbeat)
    if not applied_late_by:
        under_test.clock.now = sent_at + timedelta(seconds=90)
        await dispatcher.apply_deadline(
            DeadlineReached(correlation_id=task.correlation_id, deadline_at=under_test.clock.now)
        )
        under_test.clock.now = success.occurred_at
    await dispatcher.apply_callback(success)
    await dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    )

    async with under_test.pool.acquire() as conn:
        (row,) = await repo.find_tasks(conn, task.correlation_id)
    assert row.status is TaskStatus.EXPIRED
    assert row.deadline_at == sent_at + timedelta(seconds=90)
    events = await lifecycle(under_test)
    expected: list[type[LifecycleEvent]] = [TaskExpired, TaskResultArrivedLate]
    assert [type(event) for event in events][-2:] == expected


async def test_a_credential_too_short_to_look_for_is_sent_under_a_plain_callback_token(
    under_test: DispatcherUnderTest,
) -> None:
    request = task_request(webhookAuth="k3y")

    await under_test.dispatcher.dispatch(request)

    (sent,) = under_test.service.received
    assert sent.headers["authorization"] == "k3y"
    body = json.loads(sent.content)
    token = body["callbackUrl"].rpartition("/")[2]
    assert under_test.tokens.verified(body["correlationId"], token) == VerifiedToken("", None)
    async with under_test.pool.acquire() as conn:
        (task,) = await repo.find_tasks(conn, request.task_id)
    assert task.status.value == "initiated"


async def test_a_callback_echoing_webhook_auth_is_applied_with_it_masked_everywhere(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    credential = SECRET.removeprefix("Bearer ")
    await under_test.dispatcher.apply_callback(
        callback(task.correlation_id, "error", error=f"401 for Authorization: {SECRET}")
    )
    _, late = await dispatched(under_test)
    assert late.deadline_at is not None
    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=late.correlation_id, deadline_at=late.deadline_at)
    )
    await under_test.dispatcher.apply_callback(
        callback(
            late.correlation_id,
            "success",
            result_url=f"https://cdn.example.com/v.mp4?auth={credential}",
            metadata={"request": {"headers": {"authorization": SECRET}}},
        )
    )

    events = await lifecycle(under_test)
    failed = next(event for event in events if isinstance(event, TaskFailed))
    assert failed.reason == "401 for Authorization: Bearer **********"
    shown_late = next(event for event in events if isinstance(event, TaskResultArrivedLate))
    assert shown_late.result_url == "https://cdn.example.com/v.mp4?auth=**********"
    assert shown_late.metadata == {"request": {"headers": {"authorization": "Bearer **********"}}}
    stored: list[bytes | str] = [payload for _topic, _key, payload in await under_test.outbox()]
    async with under_test.pool.acquire() as conn:
        stored += [
            repr(await repo.history_for(conn, correlation_id))
            for correlation_id in (task.correlation_id, late.correlation_id)
        ]
        stored += [repr(await under_test.pool.fetch("SELECT * FROM tasks"))]
    assert not [item for item in stored if credential in str(item)]


class CallbacksBehindOnce:
    """A CatchUp whose first wait finds the callbacks' consumer behind."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []

    async def wait(self, key: str, moment: float) -> None:
        self.waits.append((key, moment))
        if len(self.waits) == 1:
            raise GroupBehindError("behind")


async def test_a_deadline_that_cannot_wait_for_earlier_callbacks_changes_nothing_until_again(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    assert task.deadline_at is not None
    catch_up = CallbacksBehindOnce()
    dispatcher = under_test.another(callbacks_caught_up=catch_up)
    deadline = DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    waits_before = REGISTRY.get_sample_value("webhook_tasks_dispatcher_deadline_wait_seconds_count")

    with pytest.raises(GroupBehindError):
        await dispatcher.apply_deadline(deadline)
    assert [type(event) for event in await lifecycle(under_test)] == [TaskDispatched]
    async with under_test.pool.acquire() as conn:
        assert await repo.history_for(conn, task.correlation_id) == []

    await dispatcher.apply_deadline(deadline)  # the batch comes again
    assert [type(event) for event in await lifecycle(under_test)] == [
        TaskDispatched,
        TaskExpired,
    ]
    assert catch_up.waits == [(task.correlation_id, task.deadline_at.timestamp())] * 2
    waits_after = REGISTRY.get_sample_value("webhook_tasks_dispatcher_deadline_wait_seconds_count")
    assert waits_after == (waits_before or 0) + 2, "each wait is timed, the failed one too"


async def test_callbacks_racing_deadlines_end_each_task_exactly_once(
    under_test: DispatcherUnderTest,
) -> None:
    tasks = [(await dispatched(under_test))[1] for _ in range(60)]

    await asyncio.gather(
        *(
            step
            for task in tasks
            for step in (
                under_test.dispatcher.apply_callback(callback(task.correlation_id, "success")),
                under_test.dispatcher.apply_deadline(
                    DeadlineReached(
                        correlation_id=task.correlation_id, deadline_at=task.deadline_at
                    )
                ),
                under_test.dispatcher.apply_callback(callback(task.correlation_id, "error")),
            )
        )
    )

    terminal = [
        event
        for event in await lifecycle(under_test)
        if isinstance(event, (TaskCompleted, TaskFailed, TaskExpired))
    ]
    assert sorted(event.correlation_id for event in terminal) == sorted(
        task.correlation_id for task in tasks
    )
    async with under_test.pool.acquire() as conn:
        for task in tasks:
            history = await repo.history_for(conn, task.correlation_id)
            assert [entry.outcome for entry in history].count("applied") == 1


async def test_a_callback_the_database_refuses_fails_alone_and_its_batch_still_applies(
    under_test: DispatcherUnderTest,
) -> None:
    tasks = [(await dispatched(under_test))[1] for _ in range(3)]
    # Validation refuses NUL; this one slips past it to reach the database.
    refused = callback(tasks[2].correlation_id, "error").model_copy(update={"error": "bad\x00"})

    results = await asyncio.gather(
        under_test.dispatcher.apply_callback(callback(tasks[0].correlation_id, "success")),
        under_test.dispatcher.apply_callback(callback(tasks[1].correlation_id, "error")),
        under_test.dispatcher.apply_callback(refused),
        return_exceptions=True,
    )

    assert list(results[:2]) == [None, None]
    assert isinstance(results[2], Exception)
    async with under_test.pool.acquire() as conn:
        statuses = [(await repo.find_tasks(conn, task.task_id))[0].status for task in tasks]
    assert [status.value for status in statuses] == ["completed", "failed", "initiated"]


LATE_CALLBACKS: list[tuple[str, dict[str, object], list[type[LifecycleEvent]]]] = [
    ("success", {"result_url": "https://cdn/late.mp4"}, [TaskExpired, TaskResultArrivedLate]),
    ("error", {"error": "too late"}, [TaskExpired]),
    ("progress", {"progress": 50}, [TaskExpired]),
]


@pytest.mark.parametrize(("status", "fields", "events"), LATE_CALLBACKS)
async def test_a_callback_the_gateway_took_after_the_deadline_loses_though_handled_first(
    under_test: DispatcherUnderTest,
    status: str,
    fields: dict[str, object],
    events: list[type[LifecycleEvent]],
) -> None:
    # The dispatcher was stopped at the deadline: on its return, its callbacks consumer
    # handles a callback taken 5 s after the deadline before the deadline itself.
    _, task = await dispatched(under_test)
    assert task.deadline_at is not None
    under_test.clock.advance(120)
    late = callback(
        task.correlation_id, status, occurred_at=task.deadline_at + timedelta(seconds=5), **fields
    )

    await under_test.dispatcher.apply_callback(late)
    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    )

    assert [type(event) for event in await lifecycle(under_test)] == [TaskDispatched, *events]
    async with under_test.pool.acquire() as conn:
        (row,) = await repo.find_tasks(conn, task.correlation_id)
        history = await repo.history_for(conn, task.correlation_id)
    assert row.status.value == "expired"
    assert row.status_reason == "no callback before the deadline"
    # In the order handled: the callback first, which applied the deadline before itself.
    assert [(entry.kind, entry.outcome) for entry in history] == [
        (f"callback:{status}", "ignored"),
        ("deadline", "applied"),
        ("deadline", "ignored"),
    ]
    assert "passed before the gateway took the callback" in (history[1].detail or "")


async def test_a_callback_stamped_within_the_clock_allowance_of_its_deadline_wins(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    assert task.deadline_at is not None
    stamped = task.deadline_at + CLOCK_SKEW_ALLOWANCE - timedelta(milliseconds=100)

    await under_test.dispatcher.apply_callback(
        callback(task.correlation_id, "success", occurred_at=stamped)
    )

    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [TaskDispatched, TaskCompleted]


async def test_a_late_success_is_shown_once_without_a_second_outcome(
    under_test: DispatcherUnderTest,
) -> None:
    _, task = await dispatched(under_test)
    await under_test.dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    )

    await under_test.dispatcher.apply_callback(
        callback(task.correlation_id, "success", result_url="https://cdn/late.mp4")
    )
    await under_test.dispatcher.apply_callback(
        callback(task.correlation_id, "success", result_url="https://cdn/later.mp4")
    )
    await under_test.dispatcher.apply_callback(callback(task.correlation_id, "error"))

    events = await lifecycle(under_test)
    assert [type(event) for event in events] == [
        TaskDispatched,
        TaskExpired,
        TaskResultArrivedLate,
    ]
    late = events[2]
    assert isinstance(late, TaskResultArrivedLate)
    assert late.result_url == "https://cdn/late.mp4"
    async with under_test.pool.acquire() as conn:
        (row,) = await repo.find_tasks(conn, task.correlation_id)
        history = await repo.history_for(conn, task.correlation_id)
    assert row.status.value == "expired"
    assert row.result_url == "https://cdn/late.mp4"
    assert [entry.outcome for entry in history] == ["applied", "ignored", "ignored", "ignored"]
    assert "late result" in (history[1].detail or "")
    assert "already shown" in (history[2].detail or "")
    assert "result https://cdn/later.mp4" in (history[2].detail or "")
    assert "already expired" in (history[3].detail or "")
