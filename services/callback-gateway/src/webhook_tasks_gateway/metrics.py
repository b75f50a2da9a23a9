"""The gateway's Prometheus metrics, served at /metrics on GATEWAY_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from .problems import problem_slugs

CALLBACKS = Counter(
    "webhook_tasks_gateway_callbacks_total",
    "Callbacks answered, by outcome: accepted, or the slug of the problem they were refused with.",
    ["outcome"],
)
ACCEPTED = CALLBACKS.labels("accepted")
# Every outcome is shown from the start, at 0: an alert on a rise (increase(), rate())
# misses the first refusal of a kind when its series appears only with it.
for _slug in problem_slugs():
    CALLBACKS.labels(_slug)
PUBLISH_SECONDS = Histogram(
    "webhook_tasks_gateway_publish_seconds",
    "Time Kafka took to acknowledge a callback, or to fail to.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
