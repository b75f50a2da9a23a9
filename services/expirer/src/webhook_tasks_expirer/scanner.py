"""The scan loop: announce passed deadlines through the outbox, then sleep until the next one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
from webhook_tasks_contracts import DeadlineReached, Topics, derived_event_id, utc_now
from webhook_tasks_runtime.backoff import FailingRounds, RetryDelays
from webhook_tasks_runtime.logging import correlation_context
from webhook_tasks_runtime.outbox import add_events_to_outbox

from .repository import next_deadline, take_due_deadlines

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Return the current time as an aware UTC datetime."""


def seconds_until_next_scan(
    now: datetime, upcoming: datetime | None, poll_interval: float
) -> float:
    """Return how long to sleep: until the upcoming deadline, but never beyond one poll."""
    if upcoming is None:
        return poll_interval
    return max(0.0, min(poll_interval, (upcoming - now).total_seconds()))


class DeadlineScanner:
    """Turn due deadlines into `DeadlineReached` events; safe to run in several replicas."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        topics: Topics,
        wake_relay: Callable[[], None],
        clock: Clock = utc_now,
        batch_size: int = 500,
        poll_interval: float = 0.25,
        retry_delay: float = 1.0,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._wake_relay = wake_relay
        self._clock = clock
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_delay = retry_delay
        self._wakeup = asyncio.Event()
        self._wake_at: datetime | None = None

    def notice_deadline(self, deadline_at: datetime) -> None:
        """Wake the loop early when `deadline_at` comes before its planned wake-up."""
        # While a scan is running `_wake_at` is None, so a deadline stored meanwhile
        # (perhaps after the scan's query) always causes one more scan.
        if self._wake_at is None or deadline_at < self._wake_at:
            self._wakeup.set()

    async def scan(self) -> list[DeadlineReached]:
        """Emit every deadline that is due into the outbox; return the events emitted."""
        emitted: list[DeadlineReached] = []
        while True:
            batch = await self._emit_due_batch()
            emitted += batch
            if len(batch) < self._batch_size:
                return emitted

    async def run(self) -> None:
        """Scan, sleep until the next deadline or one poll interval, and again until cancelled."""
        # At most 5 s apart: once PostgreSQL is back, deadlines that passed go soon.
        rounds = FailingRounds("deadline scan", logger, RetryDelays(self._retry_delay, 5.0))
        while True:
            self._wake_at = None
            self._wakeup.clear()
            try:
                await self.scan()
                async with self._pool.acquire() as conn:
                    upcoming = await next_deadline(conn)
            except Exception as error:
                await asyncio.sleep(rounds.failed(error))
                continue
            rounds.succeeded()
            now = self._clock()
            delay = seconds_until_next_scan(now, upcoming, self._poll_interval)
            self._wake_at = now + timedelta(seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _emit_due_batch(self) -> list[DeadlineReached]:
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await take_due_deadlines(conn, now, self._batch_size)
            events = [
                DeadlineReached(
                    # Derived from the deadline itself, so emitting it again after a
                    # replay deduplicates downstream.
                    event_id=derived_event_id(
                        "deadline", deadline.correlation_id, deadline.deadline_at.isoformat()
                    ),
                    occurred_at=now,
                    correlation_id=deadline.correlation_id,
                    deadline_at=deadline.deadline_at,
                )
                for deadline in due
            ]
            await add_events_to_outbox(conn, self._topics.deadline_reached, events)
        if events:
            self._wake_relay()
        for event in events:
            with correlation_context(event.correlation_id):
                logger.info(
                    "deadline reached",
                    extra={
                        "deadline_at": event.deadline_at.isoformat(),
                        "lateness_ms": round((now - event.deadline_at).total_seconds() * 1000),
                    },
                )
        return events
