"""Trace context: every attempt of a dispatch, retries included, is a span of the caller's trace."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import baggage, context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from webhook_tasks_contracts import CallbackReceived, DeadlineReached
from webhook_tasks_dispatcher import repository as repo
from webhook_tasks_dispatcher.service import Dispatcher

from .conftest import DispatcherUnderTest
from .test_dispatcher_service import SECRET, task_request

pytestmark = pytest.mark.integration

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"


def traced(under_test: DispatcherUnderTest) -> tuple[Dispatcher, InMemorySpanExporter]:
    """Return a dispatcher with tracing on, and where its finished spans go."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return under_test.another(tracer=provider.get_tracer("test")), spans


@contextlib.contextmanager
def in_upstream_trace(upstream: Context | None = None) -> Iterator[None]:
    """Run the block in the upstream system's trace, as a consumed task event's header sets it."""
    token = context.attach(
        upstream
        or TraceContextTextMapPropagator().extract(
            {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"}
        )
    )
    try:
        yield
    finally:
        context.detach(token)


async def test_each_attempt_carries_a_traceparent_in_the_upstream_trace(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher, spans = traced(under_test)
    statuses = iter([503, 200])
    under_test.service.answer = lambda request: httpx.Response(
        next(statuses), json={"status": "accepted"}
    )
    upstream = TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"}
    )
    upstream = baggage.set_baggage("user.email", "someone@example.com", upstream)

    with in_upstream_trace(upstream):
        await dispatcher.dispatch(task_request())
    under_test.clock.advance(3600)
    assert await dispatcher.send_due() == 1

    first, retry = under_test.service.received
    parents = [request.headers["traceparent"].split("-") for request in (first, retry)]
    assert [trace_id for _, trace_id, _, _ in parents] == [UPSTREAM_TRACE, UPSTREAM_TRACE]
    assert "baggage" not in first.headers
    finished = spans.get_finished_spans()
    (dispatch,) = [span for span in finished if span.name == "dispatch task"]
    assert dispatch.parent is not None
    assert format(dispatch.parent.span_id, "016x") == UPSTREAM_SPAN
    posts = [span for span in finished if span.name == "POST"]
    assert [format(span.context.span_id, "016x") for span in posts] == [
        span_id for _, _, span_id, _ in parents
    ]
    assert all(span.parent is not None for span in posts)
    assert {span.parent.span_id for span in posts if span.parent} == {dispatch.context.span_id}
    assert [(span.attributes or {})["http.response.status_code"] for span in posts] == [503, 200]
    assert [span.status.status_code for span in posts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert [(span.attributes or {})["webhook_tasks.attempt"] for span in posts] == [1, 2]
    assert all(SECRET not in str(dict(span.attributes or {})) for span in finished)


async def test_no_trace_context_is_sent_when_tracing_is_off(
    under_test: DispatcherUnderTest,
) -> None:
    with in_upstream_trace():
        await under_test.dispatcher.dispatch(task_request())

    (request,) = under_test.service.received
    assert "traceparent" not in request.headers


async def repo_tasks(under_test: DispatcherUnderTest, task_id: str) -> list[repo.TaskRow]:
    async with under_test.pool.acquire() as conn:
        return await repo.find_tasks(conn, task_id)


async def event_traces(under_test: DispatcherUnderTest) -> list[tuple[str, str | None]]:
    rows = await under_test.pool.fetch("SELECT payload, traceparent FROM outbox ORDER BY id")
    return [(json.loads(row["payload"])["type"], row["traceparent"]) for row in rows]


async def test_the_events_about_a_task_continue_its_dispatch_trace(
    under_test: DispatcherUnderTest,
) -> None:
    dispatcher, spans = traced(under_test)
    request = task_request()
    with in_upstream_trace():
        await dispatcher.dispatch(request)
    (task,) = await repo_tasks(under_test, request.task_id)

    # The callback arrives without a trace of its own (from the gateway, on another replica).
    await dispatcher.apply_callback(
        CallbackReceived(correlation_id=task.correlation_id, status="success")
    )

    (dispatch,) = [span for span in spans.get_finished_spans() if span.name == "dispatch task"]
    dispatch_trace = f"00-{UPSTREAM_TRACE}-{format(dispatch.context.span_id, '016x')}-01"
    assert await event_traces(under_test) == [
        ("task.dispatched", dispatch_trace),
        ("task.completed", dispatch_trace),
    ]
    # The trace also shows how the task ended.
    (applied,) = [span for span in spans.get_finished_spans() if span.name == "apply callback"]
    assert applied.parent is not None
    assert applied.parent.span_id == dispatch.context.span_id
    assert applied.context.trace_id == dispatch.context.trace_id
    assert dict(applied.attributes or {}) == {
        "webhook_tasks.correlation_id": task.correlation_id,
        "webhook_tasks.event": "callback:success",
        "webhook_tasks.status.before": "initiated",
        "webhook_tasks.status.after": "completed",
    }


async def test_an_expiry_is_a_span_of_the_tasks_trace(under_test: DispatcherUnderTest) -> None:
    dispatcher, spans = traced(under_test)
    request = task_request()
    with in_upstream_trace():
        await dispatcher.dispatch(request)
    (task,) = await repo_tasks(under_test, request.task_id)
    assert task.deadline_at is not None

    await dispatcher.apply_deadline(
        DeadlineReached(correlation_id=task.correlation_id, deadline_at=task.deadline_at)
    )

    finished = spans.get_finished_spans()
    (dispatch,) = [span for span in finished if span.name == "dispatch task"]
    (expiry,) = [span for span in finished if span.name == "apply deadline"]
    assert expiry.parent is not None
    assert expiry.parent.span_id == dispatch.context.span_id
    assert (expiry.attributes or {})["webhook_tasks.status.after"] == "expired"
    assert [kind for kind, _ in await event_traces(under_test)] == [
        "task.dispatched",
        "task.expired",
    ]


async def test_events_name_no_trace_when_tracing_is_off(under_test: DispatcherUnderTest) -> None:
    request = task_request()
    with in_upstream_trace():
        await under_test.dispatcher.dispatch(request)
    (task,) = await repo_tasks(under_test, request.task_id)
    await under_test.dispatcher.apply_callback(
        CallbackReceived(correlation_id=task.correlation_id, status="success")
    )

    assert await event_traces(under_test) == [("task.dispatched", None), ("task.completed", None)]
