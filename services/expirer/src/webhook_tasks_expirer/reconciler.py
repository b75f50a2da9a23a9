"""The reconciliation sweep: repair tasks whose deadlines and state disagree, log each repair.

The expirer watches every dispatched task until a terminal event arrives. A
sweep finds, within the expirer's own tables:

- a task whose deadline is still ahead but no longer stored (lost in a crash,
  a restore or by hand): the deadline is put back;
- a task whose deadline was announced more than `grace` ago with no terminal
  event since (the announcement was refused or lost downstream), or whose
  passed deadline was lost before it fired: the deadline is announced again,
  under a new event id, at most once per `grace`;
- deadlines and watches left for tasks already finished: dropped;
- tombstones of tasks finished longer ago than the retention: pruned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from webhook_tasks_contracts import DeadlineReached, Topics, derived_event_id, utc_now
from webhook_tasks_runtime.outbox import add_events_to_outbox

from .repository import (
    WatchedTask,
    drop_finished_leftovers,
    prune_finished_tasks,
    restore_missing_deadlines,
    take_stuck_tasks,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(slots=True)
class Repairs:
    """What one sweep changed."""

    restored: list[WatchedTask] = field(default_factory=list)
    reannounced: list[DeadlineReached] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    pruned: int = 0


class Reconciler:
    """Sweep the expirer's tables now and then; safe to run in several replicas."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        topics: Topics,
        wake_relay: Callable[[], None],
        on_deadline_restored: Callable[[datetime], None],
        clock: Clock = utc_now,
        interval: float = 300.0,
        grace: timedelta = timedelta(seconds=60),
        finished_retention: timedelta = timedelta(days=30),
        batch_size: int = 1000,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._wake_relay = wake_relay
        self._on_deadline_restored = on_deadline_restored
        self._clock = clock
        self._interval = interval
        self._grace = grace
        self._finished_retention = finished_retention
        self._batch_size = batch_size

    async def sweep(self) -> Repairs:
        """Find and repair every disagreement once; return what was repaired."""
        repairs = Repairs()
        now = self._clock()
        async with self._pool.acquire() as conn:
            dropped: set[str] = set()
            for table in ("deadlines", "watched_tasks"):
                after: str | None = ""
                while after is not None:
                    ids, after = await drop_finished_leftovers(conn, table, after, self._batch_size)
                    dropped.update(ids)
            repairs.dropped = sorted(dropped)
            while True:
                restored = await restore_missing_deadlines(conn, now, self._batch_size)
                repairs.restored += restored
                if len(restored) < self._batch_size:
                    break
            while True:
                pruned = await prune_finished_tasks(
                    conn, now - self._finished_retention, self._batch_size
                )
                repairs.pruned += pruned
                if pruned < self._batch_size:
                    break
        while True:
            reannounced = await self._reannounce_batch(now)
            repairs.reannounced += reannounced
            if len(reannounced) < self._batch_size:
                break
        self._report(repairs)
        return repairs

    async def run(self) -> None:
        """Sweep at start, then every `interval` seconds until cancelled."""
        # At start: a restart is when repairs are most likely needed.
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("reconciliation sweep failed; trying again next interval")
            await asyncio.sleep(self._interval)

    async def _reannounce_batch(self, now: datetime) -> list[DeadlineReached]:
        async with self._pool.acquire() as conn, conn.transaction():
            stuck = await take_stuck_tasks(conn, now - self._grace, now, self._batch_size)
            events = [
                DeadlineReached(
                    # A new id per re-announcement: the dispatcher drops ids it has seen.
                    event_id=derived_event_id(
                        "deadline",
                        task.correlation_id,
                        task.deadline_at.isoformat(),
                        "reannounced",
                        task.reannounced,
                    ),
                    occurred_at=now,
                    correlation_id=task.correlation_id,
                    deadline_at=task.deadline_at,
                )
                for task in stuck
            ]
            await add_events_to_outbox(conn, self._topics.deadline_reached, events)
        if events:
            self._wake_relay()
        return events

    def _report(self, repairs: Repairs) -> None:
        for task in repairs.restored:
            self._on_deadline_restored(task.deadline_at)
            logger.warning(
                "repaired: restored a lost deadline",
                extra={
                    "correlation_id": task.correlation_id,
                    "task_id": task.task_id,
                    "deadline_at": task.deadline_at.isoformat(),
                },
            )
        for event in repairs.reannounced:
            logger.warning(
                "repaired: announced an overdue deadline again",
                extra={
                    "correlation_id": event.correlation_id,
                    "deadline_at": event.deadline_at.isoformat(),
                },
            )
        for correlation_id in repairs.dropped:
            logger.warning(
                "repaired: dropped the deadline of a finished task",
                extra={"correlation_id": correlation_id},
            )
        if repairs.pruned:
            logger.info("pruned finished-task tombstones", extra={"count": repairs.pruned})
