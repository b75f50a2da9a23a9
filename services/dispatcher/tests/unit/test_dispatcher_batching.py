"""Group commit: callers in one turn share a batch; a failing batch fails only its bad item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from webhook_tasks_dispatcher.batching import GroupCommit


class Recorder:
    """A batch writer that remembers every batch and refuses negative items."""

    def __init__(self, *, pause: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.pause = pause

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if self.pause is not None:
            await self.pause.wait()
        if any(item < 0 for item in items):
            raise ValueError("negative item")
        return [item * 10 for item in items]


async def test_callers_in_one_turn_share_one_batch_and_get_their_own_results() -> None:
    writer = Recorder()
    commit = GroupCommit(writer)

    results = await asyncio.gather(*(commit.submit(item) for item in range(5)))

    assert results == [0, 10, 20, 30, 40]
    assert writer.batches == [[0, 1, 2, 3, 4]]


async def test_batches_are_capped_in_size() -> None:
    writer = Recorder()
    commit = GroupCommit(writer, max_batch=2, max_in_flight=5)

    results = await asyncio.gather(*(commit.submit(item) for item in range(5)))

    assert results == [0, 10, 20, 30, 40]
    assert writer.batches == [[0, 1], [2, 3], [4]]


async def test_items_submitted_while_batches_are_written_wait_for_the_next_batch() -> None:
    pause = asyncio.Event()
    writer = Recorder(pause=pause)
    commit = GroupCommit(writer, max_in_flight=1)
    first = asyncio.ensure_future(commit.submit(1))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(commit.submit(item)) for item in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert writer.batches == [[1]]

    pause.set()

    assert await first == 10
    assert [await future for future in later] == [20, 30, 40]
    assert writer.batches == [[1], [2, 3, 4]]


async def test_a_failing_batch_is_retried_item_by_item_so_only_the_bad_item_fails() -> None:
    writer = Recorder()
    commit = GroupCommit(writer)

    results = await asyncio.gather(
        *(commit.submit(item) for item in (1, -2, 3)), return_exceptions=True
    )

    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert results[2] == 30
    assert writer.batches == [[1, -2, 3], [1], [-2], [3]]


async def test_a_batch_failing_because_postgresql_is_away_fails_every_caller_at_once() -> None:
    # Item by item, each would wait out its own connection timeout in turn.
    batches: list[list[int]] = []

    async def away(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        raise ConnectionRefusedError(111, "Connect call failed")

    commit = GroupCommit(away)

    results = await asyncio.gather(
        *(commit.submit(item) for item in (1, 2, 3)), return_exceptions=True
    )

    assert all(isinstance(result, ConnectionRefusedError) for result in results)
    assert batches == [[1, 2, 3]]


async def test_a_cancelled_caller_does_not_break_the_batch_for_the_others() -> None:
    pause = asyncio.Event()
    writer = Recorder(pause=pause)
    commit = GroupCommit(writer)
    leaving = asyncio.ensure_future(commit.submit(1))
    staying = asyncio.ensure_future(commit.submit(2))
    await asyncio.sleep(0.01)

    leaving.cancel()
    pause.set()

    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 20
