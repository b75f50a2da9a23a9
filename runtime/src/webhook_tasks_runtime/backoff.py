"""Delays between tries of something that keeps failing: a batch, a claim, a connection."""

from __future__ import annotations

import logging


class RetryDelays:
    """Delays that double from `first` up to `longest`, and start over after a success."""

    def __init__(self, first: float, longest: float) -> None:
        self._first = first
        self._longest = max(first, longest)
        self._next = first

    def next_delay(self) -> float:
        """Return the delay to wait now, and double the next one."""
        delay = self._next
        self._next = min(delay * 2, self._longest)
        return delay

    def reset(self) -> None:
        """Start over from the first delay."""
        self._next = self._first


class FailingRounds:
    """Pace and report a background loop whose rounds fail while PostgreSQL or Kafka is away.

    The first failure of a run of them is logged with its traceback, each later one in a
    line, and the first success after them says how many there were. Between failures the
    loop waits as `delays` says, longer each time: an outage of a minute writes a dozen
    lines per loop, not one traceback a second.
    """

    def __init__(self, what: str, logger: logging.Logger, delays: RetryDelays) -> None:
        self._what = what
        self._logger = logger
        self._delays = delays
        self._failures = 0

    def failed(self, error: Exception) -> float:
        """Report `error`; return how long to wait before the next round."""
        self._failures += 1
        delay = self._delays.next_delay()
        if self._failures == 1:
            self._logger.error(
                "%s failed; retrying",
                self._what,
                exc_info=error,
                extra={"retry_in_seconds": delay},
            )
        else:
            self._logger.warning(
                "%s failed again; retrying",
                self._what,
                extra={
                    "error": f"{type(error).__name__}: {error}".rstrip(": ")[:500],
                    "failures": self._failures,
                    "retry_in_seconds": delay,
                },
            )
        return delay

    def succeeded(self) -> None:
        """End a run of failures, saying so if there was one."""
        if self._failures:
            self._logger.info("%s works again", self._what, extra={"failures": self._failures})
            self._failures = 0
            self._delays.reset()
