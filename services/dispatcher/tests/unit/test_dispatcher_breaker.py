"""Per-host circuit breakers, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from webhook_tasks_dispatcher.breaker import BreakerState, CircuitBreakers

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COOL = timedelta(seconds=30)


def breakers() -> CircuitBreakers:
    return CircuitBreakers(failure_threshold=3, cool_down=COOL)


def test_opens_after_the_threshold_of_failures_in_a_row_for_that_host_only() -> None:
    b = breakers()
    for _ in range(2):
        b.record("a", failed=True, now=T0)
    assert b.permit("a", T0) is None
    b.record("a", failed=True, now=T0)

    assert b.state("a") is BreakerState.OPEN
    assert b.permit("a", T0 + timedelta(seconds=1)) == T0 + COOL
    assert b.permit("b", T0) is None


def test_a_success_resets_the_count() -> None:
    b = breakers()
    for failed in (True, True, False, True, True):
        b.record("a", failed=failed, now=T0)
    assert b.state("a") is BreakerState.CLOSED


def test_after_the_cool_down_one_probe_goes_and_the_rest_wait_for_it() -> None:
    b = breakers()
    for _ in range(3):
        b.record("a", failed=True, now=T0)
    later = T0 + COOL

    assert b.permit("a", later) is None  # the probe
    assert b.state("a") is BreakerState.HALF_OPEN
    assert b.permit("a", later) == later + COOL  # everyone else waits

    b.record("a", failed=False, now=later)
    assert b.state("a") is BreakerState.CLOSED
    assert b.permit("a", later) is None


def test_recording_tells_when_the_circuit_closes() -> None:
    b = breakers()
    assert b.record("a", failed=False, now=T0) is False, "it was closed already"
    assert [b.record("a", failed=True, now=T0) for _ in range(3)] == [False] * 3
    assert b.permit("a", T0 + COOL) is None  # the probe

    assert b.record("a", failed=False, now=T0 + COOL) is True
    assert b.record("a", failed=False, now=T0 + COOL) is False


def test_a_failed_probe_opens_again_for_another_cool_down() -> None:
    b = breakers()
    for _ in range(3):
        b.record("a", failed=True, now=T0)
    probe_at = T0 + COOL
    assert b.permit("a", probe_at) is None

    b.record("a", failed=True, now=probe_at)

    assert b.state("a") is BreakerState.OPEN
    assert b.permit("a", probe_at + timedelta(seconds=1)) == probe_at + COOL


def test_a_probe_that_never_reports_back_is_replaced_after_a_cool_down() -> None:
    b = breakers()
    for _ in range(3):
        b.record("a", failed=True, now=T0)
    assert b.permit("a", T0 + COOL) is None

    assert b.permit("a", T0 + COOL + COOL) is None
