"""Group commit: the writes many concurrent handlers ask for, done in one transaction.

Each caller awaits its own result as if it ran alone. Items submitted while a
batch is being written wait for the next one, so batches grow with the load
instead of every item paying its own round trips. A batch that fails is tried
again item by item, so one bad item fails only its own caller; one that fails
because PostgreSQL is away fails every caller at once, as each item alone would,
one connection timeout after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from webhook_tasks_runtime.db import DATABASE_AWAY

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

RunBatch = Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT]]]


class GroupCommit(Generic[ItemT, ResultT]):
    """Coalesce concurrent calls into batches of at most `max_batch` items."""

    def __init__(
        self, run_batch: RunBatch[ItemT, ResultT], *, max_batch: int = 256, max_in_flight: int = 2
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, item: ItemT) -> ResultT:
        """Write `item` with whatever else is submitted now; return its own result."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._scheduled:
            # Let every handler that is ready in this turn of the loop join the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_batches)
        return await future

    def _start_batches(self) -> None:
        self._scheduled = False
        while self._waiting and len(self._in_flight) < self._max_in_flight:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            task = asyncio.create_task(self._write(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._waiting:
            self._start_batches()

    async def _write(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except Exception as error:
            if len(batch) == 1 or isinstance(error, DATABASE_AWAY):
                for _, future in batch:
                    _fail(future, error)
                return
            for single in batch:
                await self._write([single])
            return
        except BaseException as error:
            # Cancelled while writing: nobody knows whether it committed; callers retry.
            for _, future in batch:
                _fail(future, error)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(future: asyncio.Future[ResultT], error: BaseException) -> None:
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)
