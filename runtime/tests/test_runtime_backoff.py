"""A loop whose rounds fail waits longer each time and reports the run of failures briefly."""

from __future__ import annotations

import logging

import pytest
from webhook_tasks_runtime.backoff import FailingRounds, RetryDelays

LOGGER = "test.failing-rounds"


def test_delays_double_up_to_the_longest_and_start_over() -> None:
    delays = RetryDelays(1.0, 5.0)

    first = [delays.next_delay() for _ in range(5)]
    delays.reset()

    assert first == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert delays.next_delay() == 1.0


def test_a_run_of_failures_is_one_traceback_then_a_line_each_then_one_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = FailingRounds("outbox flush", logging.getLogger(LOGGER), RetryDelays(1.0, 30.0))
    caplog.set_level(logging.INFO, logger=LOGGER)

    waits = []
    for _ in range(7):
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError as error:
            waits.append(rounds.failed(error))
    rounds.succeeded()
    rounds.succeeded()

    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records[0] == ("ERROR", "outbox flush failed; retrying", True)
    assert "Connect call failed" in caplog.text
    assert records[1:7] == [("WARNING", "outbox flush failed again; retrying", False)] * 6
    assert records[7:] == [("INFO", "outbox flush works again", False)]
    # Fields the log call gave as `extra`.
    assert caplog.records[6].failures == 7  # type: ignore[attr-defined]
    assert "Connect call failed" in caplog.records[6].error  # type: ignore[attr-defined]


def test_after_a_recovery_the_next_failure_has_its_traceback_and_the_first_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = FailingRounds("deadline scan", logging.getLogger(LOGGER), RetryDelays(0.5, 30.0))
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(3):
        rounds.failed(TimeoutError())
    rounds.succeeded()
    caplog.clear()

    wait = rounds.failed(TimeoutError())

    assert wait == 0.5
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], TimeoutError)
