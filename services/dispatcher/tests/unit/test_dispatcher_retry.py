"""The retry schedule: which failures are retried, when, and when to give up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webhook_tasks_dispatcher.retry import (
    GiveUp,
    Retry,
    RetryPolicy,
    is_retryable,
    parse_retry_after,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (301, False),
    ],
)
def test_only_no_answer_429_and_5xx_are_retried(status: int | None, retryable: bool) -> None:
    assert is_retryable(status) is retryable
    decision = RetryPolicy().after_failure(
        attempts_made=1, status_code=status, retry_after_seconds=None, now=NOW, pending_since=NOW
    )
    assert isinstance(decision, Retry) is retryable


def test_a_retry_that_would_come_after_the_pending_limit_gives_the_task_up_now() -> None:
    policy = RetryPolicy(max_pending_seconds=3600.0)
    arrived = NOW - timedelta(seconds=3590)

    in_time = policy.after_failure(
        attempts_made=1, status_code=503, retry_after_seconds=10, now=NOW, pending_since=arrived
    )
    too_late = policy.after_failure(
        attempts_made=1, status_code=503, retry_after_seconds=11, now=NOW, pending_since=arrived
    )

    assert in_time == Retry(NOW + timedelta(seconds=10), 10), "at the limit itself it still goes"
    assert too_late == GiveUp("not accepted within 3600s of the task's arrival", shown=True)


def test_a_hold_ending_after_the_pending_limit_is_too_late() -> None:
    policy = RetryPolicy(max_pending_seconds=60.0)

    assert not policy.too_late(NOW + timedelta(seconds=60), pending_since=NOW)
    assert policy.too_late(NOW + timedelta(seconds=60.001), pending_since=NOW)


def test_waits_are_jittered_within_each_step_of_the_schedule() -> None:
    policy = RetryPolicy(rng=random.Random(7))
    for attempts_made, bound in enumerate((1.0, 5.0, 30.0, 120.0, 600.0), start=1):
        waits = []
        for _ in range(200):
            decision = policy.after_failure(
                attempts_made=attempts_made,
                status_code=503,
                retry_after_seconds=None,
                now=NOW,
                pending_since=NOW,
            )
            assert isinstance(decision, Retry)
            assert decision.at == NOW + timedelta(seconds=decision.delay_seconds)
            waits.append(decision.delay_seconds)
        assert all(0 <= wait <= bound for wait in waits)
        # Full jitter uses the whole window, not just its top.
        assert min(waits) < bound * 0.1
        assert max(waits) > bound * 0.9


def test_the_same_seed_gives_the_same_schedule() -> None:
    def schedule(seed: int) -> list[float]:
        policy = RetryPolicy(rng=random.Random(seed))
        decisions = [
            policy.after_failure(
                attempts_made=n,
                status_code=None,
                retry_after_seconds=None,
                now=NOW,
                pending_since=NOW,
            )
            for n in range(1, 6)
        ]
        return [decision.delay_seconds for decision in decisions if isinstance(decision, Retry)]

    assert schedule(1) == schedule(1)
    assert schedule(1) != schedule(2)


def test_gives_up_after_the_attempt_limit() -> None:
    policy = RetryPolicy(schedule=(1.0, 2.0), max_attempts=4, rng=random.Random(1))
    decisions = [
        policy.after_failure(
            attempts_made=n, status_code=500, retry_after_seconds=None, now=NOW, pending_since=NOW
        )
        for n in range(1, 5)
    ]
    assert [type(decision) for decision in decisions] == [Retry, Retry, Retry, GiveUp]
    third, last = decisions[2], decisions[3]
    assert isinstance(third, Retry)
    assert isinstance(last, GiveUp)
    # Past the end of the schedule its last step repeats.
    assert third.delay_seconds <= 2.0
    assert "4 attempts" in last.why


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(retry_after_cap_seconds=60.0, rng=random.Random(1))

    honoured = policy.after_failure(
        attempts_made=1, status_code=429, retry_after_seconds=17, now=NOW, pending_since=NOW
    )
    capped = policy.after_failure(
        attempts_made=1, status_code=429, retry_after_seconds=86_400, now=NOW, pending_since=NOW
    )

    assert honoured == Retry(NOW + timedelta(seconds=17), 17)
    assert capped == Retry(NOW + timedelta(seconds=60), 60)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
        # The three HTTP-date forms of RFC 9110, all UTC.
        ("Thu, 01 Jan 2026 12:01:00 GMT", 60.0),
        ("Thursday, 01-Jan-26 12:01:00 GMT", 60.0),
        ("Thu Jan  1 12:01:00 2026", 60.0),
        ("Thu Jan  1 11:00:00 2026", 0.0),
        ("Thu, 01 Jan 2026 12:01:00 -0000", 60.0),
        ("0", 0.0),
        ("007", 7.0),
    ],
)
def test_retry_after_header_forms(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "²",  # superscript two
        "١٢٠",  # Arabic-Indic digits
        "\uff11\uff12",  # fullwidth digits
        "5²",
        "+5",
        "-0",
        "1.5",
        "1e3",
        "inf",
        "nan",
        "1_000",
        "",
        "   ",
        "\t\n",
        "\x00",
        "garbage",
        "Thu, 32 Jan 2026 12:00:00 GMT",
        "Thu, 01 Jan 2026 25:00:00 GMT",
        "Thu, 01 Jan 99999 12:00:00 GMT",
        "Thu, 01 Jan 2026 12:00:00 +99999999999999999999",
    ],
)
def test_an_unusable_retry_after_header_means_none(header: str) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_a_huge_retry_after_is_capped_by_the_policy() -> None:
    seconds = parse_retry_after("9" * 400, now=NOW)
    assert seconds is not None
    decision = RetryPolicy(retry_after_cap_seconds=60.0).after_failure(
        attempts_made=1, status_code=503, retry_after_seconds=seconds, now=NOW, pending_since=NOW
    )
    assert decision == Retry(NOW + timedelta(seconds=60), 60)


_DATE_PIECES = st.sampled_from(
    [
        *("Thu,", "Thursday,", "Jan", "Feb", "01-Jan-26", "1", "29", "31", "2026", "99999"),
        *("12:00:00", "24:60:60", "GMT", "+0100", "-0000", "+99999999999"),
        *("-", ":", "²", "٣", "\x00"),
    ]
)


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(),
        st.from_regex(r"\s*[0-9]+\s*", fullmatch=True),
        st.lists(_DATE_PIECES, max_size=8).map(" ".join),
    )
)
def test_retry_after_never_raises(header: str) -> None:
    seconds = parse_retry_after(header, now=NOW)
    assert seconds is None or seconds >= 0


def test_a_bad_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        RetryPolicy(schedule=())
    with pytest.raises(ValueError, match="schedule"):
        RetryPolicy(schedule=(1.0, 0.0))
