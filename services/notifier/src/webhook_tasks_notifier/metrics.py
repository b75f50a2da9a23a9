"""The notifier's Prometheus metrics, served at the worker's /metrics."""

from __future__ import annotations

from prometheus_client import Counter

SINK_ATTEMPTS = Counter(
    "webhook_tasks_notifier_sink_attempts_total",
    "POSTs to the HTTP sink, by outcome: delivered, failed (tried again later) or given_up.",
    ["outcome"],
)
# Every outcome is shown from the start, at 0: an alert on a rise (increase(), rate())
# misses the first give-up when its series appears only with it.
for _outcome in ("delivered", "failed", "given_up"):
    SINK_ATTEMPTS.labels(_outcome)
