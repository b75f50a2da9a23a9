"""Per-host circuit breakers: stop sending to a host that keeps failing, probe it later.

State is per process and in memory: each replica learns a host's health from its own
requests, and a restart starts closed (the first failures open it again). `record`
says when a breaker closes, so that what was held for its host can go at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """Whether requests to a host go out."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class _Host:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    open_until: datetime | None = None


class CircuitBreakers:
    """One breaker per host: opens after `failure_threshold` failures in a row."""

    def __init__(self, *, failure_threshold: int = 5, cool_down: timedelta) -> None:
        self._threshold = failure_threshold
        self._cool_down = cool_down
        self._hosts: dict[str, _Host] = {}

    def state(self, host: str) -> BreakerState:
        """Return the breaker's state for `host`."""
        entry = self._hosts.get(host)
        return entry.state if entry else BreakerState.CLOSED

    def permit(self, host: str, now: datetime) -> datetime | None:
        """Return None if a request to `host` may go now, else when to ask again."""
        entry = self._hosts.get(host)
        if entry is None or entry.state is BreakerState.CLOSED:
            return None
        assert entry.open_until is not None
        if entry.state is BreakerState.OPEN and now >= entry.open_until:
            # This request is the probe; others wait until it has answered.
            entry.state = BreakerState.HALF_OPEN
            entry.open_until = now + self._cool_down
            logger.info("circuit half-open; probing", extra={"webhook_host": host})
            return None
        if entry.state is BreakerState.HALF_OPEN and now >= entry.open_until:
            # The probe never reported back (its sender died); let another one try.
            entry.open_until = now + self._cool_down
            return None
        return entry.open_until

    def record(self, host: str, *, failed: bool, now: datetime) -> bool:
        """Count a request's outcome (a failure is no answer, 429 or 5xx); True if it closed."""
        entry = self._hosts.setdefault(host, _Host())
        if not failed:
            self._hosts.pop(host, None)
            if entry.state is BreakerState.CLOSED:
                return False
            logger.info("circuit closed; host answers again", extra={"webhook_host": host})
            return True
        entry.failures += 1
        if entry.state is BreakerState.HALF_OPEN or entry.failures >= self._threshold:
            if entry.state is not BreakerState.OPEN:
                logger.warning(
                    "circuit open; holding requests to this host",
                    extra={
                        "webhook_host": host,
                        "failures": entry.failures,
                        "cool_down_seconds": self._cool_down.total_seconds(),
                    },
                )
            entry.state = BreakerState.OPEN
            entry.open_until = now + self._cool_down
        return False
