"""Tracing settings: off by default; on, spans carry the service name; context crosses hops."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from webhook_tasks_runtime.settings import RuntimeSettings
from webhook_tasks_runtime.tracing import (
    context_from_headers,
    context_from_traceparent,
    create_tracer_provider,
    trace_headers,
    traceparent_of,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def settings(**values: str) -> RuntimeSettings:
    return RuntimeSettings.model_validate({"kafka_bootstrap_servers": "kafka:9092", **values})


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert create_tracer_provider(settings(), "dispatcher") is None


def test_an_unknown_exporter_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="otel_traces_exporter"):
        settings(otel_traces_exporter="zipkin")


def test_spans_carry_the_service_name_and_continue_a_received_trace() -> None:
    exported = InMemorySpanExporter()
    provider = create_tracer_provider(
        settings(otel_service_name="dispatcher-eu"), "dispatcher", exporter=exported
    )
    assert provider is not None
    tracer = provider.get_tracer("test")

    parent = context_from_headers([("other", b"x"), ("traceparent", TRACEPARENT.encode())])
    with tracer.start_as_current_span("work", context=parent) as span:
        headers = trace_headers(span)
    provider.shutdown()

    (finished,) = exported.get_finished_spans()
    assert finished.resource.attributes["service.name"] == "dispatcher-eu"
    assert format(finished.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert headers["traceparent"] == traceparent_of(span)
    assert headers["traceparent"].split("-")[2] == format(finished.context.span_id, "016x")


def test_no_context_without_a_traceparent_and_none_from_a_span_that_is_not_recorded() -> None:
    assert context_from_headers([("tracestate", b"vendor=1")]) is None
    assert context_from_headers(None) is None
    assert context_from_traceparent(None) is None
    assert traceparent_of(trace.INVALID_SPAN) is None
    assert trace_headers(trace.INVALID_SPAN) == {}
