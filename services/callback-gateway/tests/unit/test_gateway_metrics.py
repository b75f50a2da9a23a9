"""Every outcome of a callback is on /metrics from the start, so alerts see its first rise."""

from __future__ import annotations

from prometheus_client import REGISTRY
from webhook_tasks_gateway import metrics  # noqa: F401 (registers the gateway's metrics)
from webhook_tasks_gateway.problems import problem_slugs


def test_each_refusal_is_counted_from_zero_before_it_first_happens() -> None:
    slugs = problem_slugs()

    assert {"callback-not-stored", "gateway-busy", "invalid-callback-token"} <= slugs
    for outcome in ("accepted", *slugs):
        value = REGISTRY.get_sample_value(
            "webhook_tasks_gateway_callbacks_total", {"outcome": outcome}
        )
        assert value is not None, outcome
