"""HostSlots: at most so many requests in flight to one host, the wait for a slot bounded."""

from __future__ import annotations

import asyncio

from webhook_tasks_dispatcher.client import HostSlots


async def test_a_free_slot_is_taken_at_once_and_a_host_has_at_most_its_share() -> None:
    slots = HostSlots(2)
    async with (
        slots.slot("a:443", wait=5) as first,
        slots.slot("a:443", wait=5) as second,
        slots.slot("a:443", wait=0.05) as third,
        slots.slot("b:443", wait=5) as other,
    ):
        assert (first, second, third, other) == (True, True, False, True)


async def test_a_waiter_gets_the_slot_as_soon_as_it_is_released() -> None:
    slots = HostSlots(1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.slot("a:443", wait=5) as free:
            assert free
            held.set()
            await release.wait()

    holding = asyncio.create_task(holder())
    await held.wait()

    async def waiter() -> bool:
        async with slots.slot("a:443", wait=5) as free:
            return free

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    release.set()
    assert await asyncio.wait_for(waiting, 1) is True
    await holding


async def test_a_wait_that_runs_out_takes_no_slot_and_leaves_no_host_behind() -> None:
    slots = HostSlots(1)
    async with slots.slot("a:443", wait=5), slots.slot("a:443", wait=0.01) as free:
        assert not free
    # Both have left: the host is forgotten, and its one slot is free again.
    assert slots._hosts == {}
    async with slots.slot("a:443", wait=0.01) as free:
        assert free


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    slots = HostSlots(1)
    release = asyncio.Event()

    async def use(wait: float) -> bool:
        async with slots.slot("a:443", wait=wait) as free:
            if free:
                await release.wait()
            return free

    holding = asyncio.create_task(use(5))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(use(5))
    following = asyncio.create_task(use(5))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    release.set()
    assert await asyncio.wait_for(following, 1) is True
    assert await holding is True
    assert cancelled.cancelled()
    assert slots._hosts == {}
