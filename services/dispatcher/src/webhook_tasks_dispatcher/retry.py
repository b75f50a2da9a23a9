"""When to send a failed request again: exponential backoff with full jitter. Pure, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

DEFAULT_SCHEDULE: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
"""Upper bounds of the waits before the 2nd, 3rd, ... request, in seconds."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send again at `at`."""

    at: datetime
    delay_seconds: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Do not send again: the failure is permanent, or the attempts or the time are used up."""

    why: str
    shown: bool = False
    """Whether `why` goes into the task's reason too: the failure alone says why there is no
    retry, but for the pending limit, which a retry would have passed."""


def is_retryable(status_code: int | None) -> bool:
    """Tell whether a failed request may succeed later: no answer, 429 or 5xx."""
    return status_code is None or status_code == 429 or status_code >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait; `rng` is injected so tests can seed it."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    max_attempts: int = len(DEFAULT_SCHEDULE) + 1
    retry_after_cap_seconds: float = 600.0
    max_pending_seconds: float = 3600.0
    """The longest a task may wait for its request to be accepted, counted from its arrival:
    held for its host's open circuit, its waits use no attempts, and would otherwise last as
    long as the host stays down."""
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if not self.schedule or any(step <= 0 for step in self.schedule):
            raise ValueError("the retry schedule needs at least one positive step")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff_bound(self, attempts_made: int) -> float:
        """Return the longest wait after `attempts_made` failed requests (the last step repeats)."""
        return self.schedule[min(attempts_made, len(self.schedule)) - 1]

    def after_failure(
        self,
        *,
        attempts_made: int,
        status_code: int | None,
        retry_after_seconds: float | None,
        now: datetime,
        pending_since: datetime,
    ) -> Retry | GiveUp:
        """Decide what follows the `attempts_made`-th failed request."""
        if not is_retryable(status_code):
            return GiveUp(f"HTTP {status_code} is not worth retrying")
        if attempts_made >= self.max_attempts:
            return GiveUp(f"gave up after {attempts_made} attempts")
        if retry_after_seconds is not None:
            # The service said when; a hostile or confused one may not park us for days.
            delay = min(max(retry_after_seconds, 0.0), self.retry_after_cap_seconds)
        else:
            # Full jitter spreads a burst of failures over the whole window.
            delay = self.rng.uniform(0.0, self.backoff_bound(attempts_made))
        retry = Retry(now + timedelta(seconds=delay), delay)
        if self.too_late(retry.at, pending_since=pending_since):
            return GiveUp(self.too_late_reason, shown=True)
        return retry

    def too_late(self, next_try: datetime, *, pending_since: datetime) -> bool:
        """Tell whether a try at `next_try` would keep the task pending longer than allowed."""
        return next_try > pending_since + timedelta(seconds=self.max_pending_seconds)

    @property
    def too_late_reason(self) -> str:
        """Return why a task that was pending too long was given up."""
        return f"not accepted within {self.max_pending_seconds:g}s of the task's arrival"


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Return a Retry-After header (seconds or an HTTP date) as seconds from `now`, else None."""
    if value is None:
        return None
    value = value.strip()
    # RFC 9110 delay-seconds is 1*DIGIT: ASCII only, as str.isdigit() also takes "²" and "٣".
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        # Every HTTP-date form is UTC, and the asctime form carries no zone to say so.
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
