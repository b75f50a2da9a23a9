"""How long the scanner sleeps between scans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from webhook_tasks_expirer.scanner import seconds_until_next_scan

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLL = 0.25


def test_without_deadlines_it_sleeps_one_poll_interval() -> None:
    assert seconds_until_next_scan(NOW, None, POLL) == POLL


def test_it_wakes_exactly_at_a_deadline_sooner_than_the_poll_interval() -> None:
    upcoming = NOW + timedelta(milliseconds=120)

    assert seconds_until_next_scan(NOW, upcoming, POLL) == pytest.approx(0.12)


def test_a_distant_deadline_still_wakes_it_after_one_poll_interval() -> None:
    # Another replica may store an earlier deadline meanwhile; only polling notices it.
    upcoming = NOW + timedelta(hours=1)

    assert seconds_until_next_scan(NOW, upcoming, POLL) == POLL


@pytest.mark.parametrize("overdue", [timedelta(0), timedelta(seconds=3)])
def test_a_due_deadline_means_no_sleep(overdue: timedelta) -> None:
    assert seconds_until_next_scan(NOW, NOW - overdue, POLL) == 0.0
