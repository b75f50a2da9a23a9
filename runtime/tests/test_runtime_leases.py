"""A claim by lease that a stop interrupts hands back what it took, and only that."""

from __future__ import annotations

import asyncio

import pytest
from webhook_tasks_runtime.leases import claim_or_hand_back


class Claims:
    """A claim whose answer comes only once the test lets it, and what was handed back."""

    def __init__(self, taken: list[str], *, fails: bool = False) -> None:
        self.taken = taken
        self.fails = fails
        self.started = asyncio.Event()
        self.answer = asyncio.Event()
        self.handed_back: list[list[str]] = []

    async def claim(self) -> list[str]:
        self.started.set()
        await self.answer.wait()
        if self.fails:
            raise ConnectionError("the database went away")
        return self.taken

    async def hand_back(self, taken: list[str]) -> None:
        self.handed_back.append(taken)


async def test_an_uninterrupted_claim_returns_what_it_took_and_hands_nothing_back() -> None:
    claims = Claims(["a", "b"])
    claims.answer.set()

    assert await claim_or_hand_back(claims.claim(), claims.hand_back) == ["a", "b"]
    assert claims.handed_back == []


async def test_a_claim_interrupted_by_a_stop_is_awaited_and_what_it_took_handed_back() -> None:
    claims = Claims(["a", "b"])
    waiting = asyncio.create_task(claim_or_hand_back(claims.claim(), claims.hand_back))
    await claims.started.wait()

    waiting.cancel()
    await asyncio.sleep(0.05)
    assert not waiting.done(), "gave up on the claim's answer"
    claims.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert claims.handed_back == [["a", "b"]]


@pytest.mark.parametrize("outcome", ["took nothing", "failed", "never answered"])
async def test_a_claim_that_took_nothing_failed_or_never_answered_has_nothing_to_hand_back(
    outcome: str,
) -> None:
    claims = Claims([] if outcome == "took nothing" else ["a"], fails=outcome == "failed")
    waiting = asyncio.create_task(claim_or_hand_back(claims.claim(), claims.hand_back, wait=0.1))
    await claims.started.wait()

    waiting.cancel()
    if outcome != "never answered":
        claims.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)
    assert claims.handed_back == []
