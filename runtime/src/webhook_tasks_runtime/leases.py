"""Rows claimed by lease (an UPDATE ... RETURNING that leases them) that a stop must not strand.

A stop that cancels the await of such a claim after the database has run it leaves
the rows leased with nobody holding them: no process may take them before the lease
runs out, minutes later. `claim_or_hand_back` waits for the claim's answer instead
and hands back what it took, so they are due again at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

HAND_BACK_WAIT_SECONDS = 5.0
"""How long a stop waits for an interrupted claim's answer."""


async def claim_or_hand_back(
    claim: Coroutine[Any, Any, list[T]],
    hand_back: Callable[[list[T]], Awaitable[None]],
    *,
    wait: float = HAND_BACK_WAIT_SECONDS,
) -> list[T]:
    """Return what `claim` took; cancelled meanwhile, hand that back, then raise."""
    claiming = asyncio.ensure_future(claim)
    try:
        return await asyncio.shield(claiming)
    except asyncio.CancelledError:
        await asyncio.wait({claiming}, timeout=wait)
        answered = claiming.done() and not claiming.cancelled()
        taken = claiming.result() if answered and claiming.exception() is None else []
        claiming.cancel()  # still waiting after `wait`: its rows then wait out their lease
        if taken:
            await hand_back(taken)
        raise
