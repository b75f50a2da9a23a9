"""The dispatcher's Prometheus metrics, served at the worker's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS_IN_FLIGHT = Gauge(
    "webhook_tasks_dispatcher_requests_in_flight",
    "Requests to external services being sent now; at SENDER_MAX_IN_FLIGHT the consumer waits.",
)
ATTEMPTS = Counter(
    "webhook_tasks_dispatcher_attempts_total",
    "Requests to external services, by outcome (accepted, rejected, unreachable, refused).",
    ["outcome"],
)
DEADLINE_WAIT_SECONDS = Histogram(
    "webhook_tasks_dispatcher_deadline_wait_seconds",
    "How long deadlines waited for the callbacks accepted before them to be applied.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
