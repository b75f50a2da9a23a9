"""The dispatcher's Prometheus metrics, served at the worker's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS_IN_FLIGHT = Gauge(
    "webhook_tasks_dispatcher_requests_in_flight",
    "Requests to external services being sent now; at SENDER_MAX_IN_FLIGHT the consumer waits.",
)
ATTEMPTS = Counter(
    "webhook_tasks_dispatcher_attempts_total",
    "Requests to external services, by outcome (accepted, rejected, unreachable, refused).",
    ["outcome"],
)
