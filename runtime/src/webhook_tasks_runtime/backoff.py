"""Delays between tries of something that keeps failing: a batch, a claim, a connection."""

from __future__ import annotations


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
