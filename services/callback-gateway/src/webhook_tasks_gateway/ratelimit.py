"""In-memory token buckets: each request spends a token, and tokens come back at a steady rate.

Per process: with N gateway replicas a client gets up to N times the configured rate,
which is fine for a limit meant to stop floods, not to meter.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class TokenBuckets:
    """One bucket per key (a client address, a correlation id), at most `max_keys` of them."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token of `key`; return 0 if there was one, else the seconds until there is."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget(now)
            self._buckets[key] = _Bucket(self._burst - 1, now)
            return 0.0
        tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if tokens >= 1:
            bucket.tokens = tokens - 1
            return 0.0
        bucket.tokens = tokens
        return (1 - tokens) / self._rate

    def _forget(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it changes nothing.
        refill = self._burst / self._rate
        for key in [k for k, b in self._buckets.items() if now - b.updated >= refill]:
            del self._buckets[key]
        # Still full of active keys (a flood from many addresses): forget the oldest tenth, erring
        # towards letting requests through; forgetting a tenth keeps this rare, not per request.
        if len(self._buckets) >= self._max_keys:
            for key in list(self._buckets)[: max(1, self._max_keys // 10)]:
                del self._buckets[key]
