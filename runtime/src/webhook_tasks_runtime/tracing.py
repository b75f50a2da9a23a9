"""Tracing with OpenTelemetry: off unless OTEL_TRACES_EXPORTER names an exporter.

W3C trace context travels as `traceparent` (and `tracestate`): consumers read it
from Kafka message headers, the dispatcher writes it on requests to external
services. Baggage is never propagated: it could carry data to a third party.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .settings import RuntimeSettings

TRACE_HEADERS = ("traceparent", "tracestate")

_propagator = TraceContextTextMapPropagator()


def create_tracer_provider(
    settings: RuntimeSettings, service: str, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Build a provider exporting this service's spans; None when tracing is off."""
    if exporter is None:
        if settings.otel_traces_exporter == "none":
            return None
        exporter = _exporter(settings.otel_traces_exporter)
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.otel_service_name or f"webhook-tasks-{service}"}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    # Imported here: only a process that exports over OTLP pays for protobuf.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter()


def context_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> Context | None:
    """Return the trace context carried by Kafka message headers, if any."""
    carrier = {
        key.lower(): value.decode("latin-1")
        for key, value in headers or ()
        if key.lower() in TRACE_HEADERS and value is not None
    }
    if "traceparent" not in carrier:
        return None
    return _propagator.extract(carrier)


def traceparent_of(span: trace.Span) -> str | None:
    """Return the `traceparent` value naming `span`, or None for a span that is not recorded."""
    # With tracing off every span is the invalid one: no propagator run per task for nothing.
    if not span.get_span_context().is_valid:
        return None
    return trace_headers(span).get("traceparent")


def current_traceparent() -> str | None:
    """Return the `traceparent` of the trace the caller runs in (a consumed message's), if any."""
    span = trace.get_current_span()
    return traceparent_of(span) if span.get_span_context().is_valid else None


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """Return the trace context a stored `traceparent` names, if any."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def trace_headers(span: trace.Span) -> Mapping[str, str]:
    """Return the headers that carry `span` to the next hop (empty when not recorded)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
