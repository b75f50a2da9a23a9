"""How many bytes of callbacks the gateway holds at once, so a burst of large ones cannot
exhaust its memory.

A callback holds the bytes of its body as they arrive, until Kafka has it: its body, what
it parses into and the event sent take 4-9 times the body's size (measured on 1 MiB
bodies). Past the budget, or past one correlation id's share of it (an eighth, and at least
one body at the limit), the callback is answered 503 with Retry-After. Only bytes that
arrived count, so a request that announces a large body and sends nothing holds nothing.
"""

from __future__ import annotations

from .problems import GatewayBusyError


class BodyBudget:
    """Bytes of callback bodies this process may hold at once, and one correlation id's share."""

    def __init__(self, limit: int, *, body_limit: int, retry_after_seconds: int) -> None:
        self._limit = limit
        self._share = max(limit // 8, body_limit)
        self._retry_after = retry_after_seconds
        self._by_correlation_id: dict[str, int] = {}
        self.held = 0

    def holder(self, correlation_id: str) -> Held:
        """Return what one callback for `correlation_id` holds; nothing yet."""
        return Held(self, correlation_id)


class Held:
    """The bytes one callback holds of the budget; released once, when it is answered."""

    __slots__ = ("_budget", "_correlation_id", "_size")

    def __init__(self, budget: BodyBudget, correlation_id: str) -> None:
        self._budget = budget
        self._correlation_id = correlation_id
        self._size = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes; GatewayBusyError past the budget or the id's share."""
        budget = self._budget
        mine = budget._by_correlation_id.get(self._correlation_id, 0)
        if budget.held + size > budget._limit or mine + size > budget._share:
            raise GatewayBusyError(budget._retry_after)
        budget.held += size
        budget._by_correlation_id[self._correlation_id] = mine + size
        self._size += size

    def release(self) -> None:
        """Give back every byte held."""
        if not self._size:
            return
        budget = self._budget
        budget.held -= self._size
        left = budget._by_correlation_id[self._correlation_id] - self._size
        if left:
            budget._by_correlation_id[self._correlation_id] = left
        else:
            del budget._by_correlation_id[self._correlation_id]
        self._size = 0
