"""The bytes callbacks hold of the gateway's budget, and its refusals."""

from __future__ import annotations

import pytest
from webhook_tasks_gateway.admission import BodyBudget
from webhook_tasks_gateway.problems import GatewayBusyError


def test_bytes_are_held_as_they_arrive_and_refused_past_the_budget() -> None:
    budget = BodyBudget(1000, body_limit=100, retry_after_seconds=7)
    callbacks = [budget.holder(f"corr-{index}") for index in range(11)]
    for held in callbacks[:10]:
        held.take(60)
        held.take(40)

    with pytest.raises(GatewayBusyError) as refused:
        callbacks[10].take(1)
    callbacks[0].release()
    callbacks[10].take(100)

    assert refused.value.headers() == {"Retry-After": "7"}
    assert budget.held == 1000


def test_one_correlation_id_holds_at_most_an_eighth() -> None:
    # One valid callback URL must not be enough to keep every other task's callbacks out.
    budget = BodyBudget(8000, body_limit=100, retry_after_seconds=5)
    same = [budget.holder("corr-greedy") for _ in range(11)]
    for held in same[:10]:
        held.take(100)

    with pytest.raises(GatewayBusyError):
        same[10].take(1)
    budget.holder("corr-other").take(100)

    assert budget.held == 1100


def test_the_share_is_at_least_one_body_at_the_limit() -> None:
    budget = BodyBudget(1000, body_limit=1000, retry_after_seconds=5)

    budget.holder("corr-1").take(1000)

    assert budget.held == 1000


def test_a_release_gives_back_everything_once() -> None:
    budget = BodyBudget(1000, body_limit=100, retry_after_seconds=5)
    held = budget.holder("corr-1")
    held.take(30)
    held.take(20)

    held.release()
    held.release()

    assert budget.held == 0
    budget.holder("corr-1").take(100)
