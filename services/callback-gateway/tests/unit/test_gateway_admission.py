"""The bytes a callback holds of the gateway's budget, and the budget's refusals."""

from __future__ import annotations

import pytest
from webhook_tasks_gateway.admission import BodyBudget, bytes_to_hold
from webhook_tasks_gateway.problems import GatewayBusyError


@pytest.mark.parametrize(
    ("declared", "held"),
    [
        ("512", 512),
        ("0", 0),
        ("000512", 512),
        ("1000", 1000),
        ("1001", 0),  # refused (413) before it is read
        ("9" * 400, 0),  # ditto, without reading thousands of digits as a number
        (None, 1000),  # chunked: as much as it may have
        ("12a", 1000),  # not a length: counted as it arrives, up to the limit
        ("١٢", 1000),  # digits, but not ASCII ones
    ],
)
def test_a_callback_holds_its_declared_length_or_the_limit(declared: str | None, held: int) -> None:
    assert bytes_to_hold(declared, 1000) == held


def test_the_budget_refuses_what_would_exceed_it_and_takes_back_what_is_released() -> None:
    budget = BodyBudget(1000, retry_after_seconds=7)
    first = budget.hold(600)

    with pytest.raises(GatewayBusyError) as refused:
        budget.hold(500)
    first.release()
    second = budget.hold(1000)

    assert refused.value.headers() == {"Retry-After": "7"}
    assert budget.held == 1000
    second.release()
    second.release()  # once only: a second release gives back nothing
    assert budget.held == 0
