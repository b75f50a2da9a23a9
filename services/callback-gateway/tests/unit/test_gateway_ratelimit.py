"""Token buckets on a clock the test turns: bursts, refill, and a bounded memory."""

from __future__ import annotations

import pytest
from webhook_tasks_gateway.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_burst_is_allowed_then_the_wait_is_told(clock: Clock) -> None:
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)

    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)


def test_tokens_come_back_at_the_rate_up_to_the_burst(clock: Clock) -> None:
    buckets = TokenBuckets(rate=1, burst=2, clock=clock)
    for _ in range(2):
        buckets.take("a")

    clock.now += 1
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)][:2] == [0, 0]
    assert buckets.take("a") > 0


def test_keys_have_their_own_buckets(clock: Clock) -> None:
    buckets = TokenBuckets(rate=1, burst=1, clock=clock)

    assert buckets.take("a") == 0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0


def test_refilled_buckets_are_forgotten_first_when_memory_is_full(clock: Clock) -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=3, clock=clock)
    buckets.take("idle")
    clock.now += 10
    buckets.take("busy-1")
    buckets.take("busy-2")

    buckets.take("new")

    assert len(buckets) == 3
    # The busy keys are still limited: their buckets were kept.
    assert buckets.take("busy-1") > 0
    assert buckets.take("busy-2") > 0


def test_memory_stays_bounded_under_a_flood_of_new_keys(clock: Clock) -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, max_keys=100, clock=clock)

    for index in range(1000):
        buckets.take(f"client-{index}")

    assert len(buckets) <= 100


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_useless_limit_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBuckets(rate=rate, burst=burst)
