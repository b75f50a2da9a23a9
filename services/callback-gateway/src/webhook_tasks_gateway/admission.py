"""How many bytes of callbacks the gateway holds at once, so a burst of large ones cannot
exhaust its memory.

A callback is held from the moment its body is read until Kafka has it: its body, what it
parses into and the event sent (4-9 times the body's size, measured on 1 MiB bodies). Past
the budget, a callback is answered 503 with Retry-After before its body is read; bodies of
a few KiB, the usual, never come near it.
"""

from __future__ import annotations

from .problems import GatewayBusyError


class BodyBudget:
    """Bytes of callback bodies this process may hold at once."""

    def __init__(self, limit: int, *, retry_after_seconds: int) -> None:
        self._limit = limit
        self._retry_after = retry_after_seconds
        self.held = 0

    def hold(self, size: int) -> Held:
        """Hold `size` bytes until the returned Held is released; GatewayBusyError if over."""
        if self.held + size > self._limit:
            raise GatewayBusyError(self._retry_after)
        self.held += size
        return Held(self, size)


class Held:
    """Bytes held for one callback; release them once, when it is answered."""

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    def release(self) -> None:
        """Give the bytes back."""
        self._budget.held -= self._size
        self._size = 0


def bytes_to_hold(declared: str | None, limit: int) -> int:
    """Return the bytes a body will take: its Content-Length, else as many as it may have.

    A declared length over `limit` holds nothing: the body is refused (413) before it is read.
    """
    if declared is not None and declared.isascii() and declared.isdigit():
        digits = declared.lstrip("0")
        if len(digits) > len(str(limit)):
            return 0
        size = int(digits or "0")
        return size if size <= limit else 0
    return limit
