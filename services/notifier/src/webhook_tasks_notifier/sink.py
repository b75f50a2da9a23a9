"""The HTTP sink: POST every announcement to a configured URL, signed, retried with backoff.

For chat or notification systems that do not read Kafka. Each announcement is
queued in `sink_deliveries` with the comment it announces, then POSTed as the
same JSON the notifications topic carries, signed per Standard Webhooks
(`webhook-id` is the event id, so a receiver drops a repeat). Delivery is at
least once: a failure or a crash mid-POST means the announcement comes again.
A delivered row is deleted at once; one given up on is kept for the retention
(to see what the sink missed), then pruned. A comment's texts go one at a time:
only its newest pending text is sent, never while another is in flight, and the
older ones it supersedes are deleted unsent (the receiver would drop them anyway,
by their `revision`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import httpx
from standardwebhooks import Webhook
from webhook_tasks_contracts import utc_now
from webhook_tasks_runtime.backoff import FailingRounds, RetryDelays
from webhook_tasks_runtime.db import retry_while_database_away
from webhook_tasks_runtime.leases import claim_or_hand_back

from . import repository
from .metrics import SINK_ATTEMPTS
from .repository import SinkDelivery

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

MAX_ERROR_LENGTH = 300


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays between attempts: `first`, doubled each time, never above `longest`."""

    first: timedelta = timedelta(seconds=1)
    longest: timedelta = timedelta(minutes=10)

    def after(self, attempts: int) -> timedelta:
        """Return how long to wait after the `attempts`-th failed attempt."""
        return min(self.longest, self.first * (1 << max(0, attempts - 1)))


def lease_for(timeout: float) -> timedelta:
    """Return how long a claimed delivery stays off other replicas if a POST takes `timeout` s."""
    # The POST, then its record, tried for up to half the lease (see `deliver_due`).
    return max(timedelta(seconds=60), timedelta(seconds=2 * timeout + 10))


def create_http_client(*, timeout_seconds: float) -> httpx.AsyncClient:
    """Return the sink's HTTP client, on the aiohttp transport (measured fastest here)."""
    from httpx_aiohttp import AiohttpTransport

    # The URL is the operator's, not a task's: no SSRF guard, but no redirects either.
    return httpx.AsyncClient(
        transport=AiohttpTransport(trust_env=False),
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,
    )


class HttpSink:
    """Deliver queued announcements to one URL; safe to run in several replicas."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        clock: Clock = utc_now,
        backoff: Backoff = Backoff(),
        max_attempts: int = 12,
        batch_size: int = 50,
        timeout: float = 10.0,
        idle_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        prune_interval: timedelta = timedelta(hours=1),
        prune_batch_size: int = 1000,
    ) -> None:
        self._pool = pool
        self._http = http
        self._url = url
        self._url_secrets = _url_secrets(url)
        self._signer = Webhook(secret)
        self._clock = clock
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._timeout = timeout
        self._lease = lease_for(timeout)
        self._idle_interval = idle_interval
        self._retention = retention
        self._prune_interval = prune_interval
        self._prune_batch_size = prune_batch_size
        self._next_prune_at: datetime | None = None
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Deliver now; called after a transaction that queued deliveries commits."""
        self._wakeup.set()

    async def deliver_due(self) -> int:
        """POST every delivery that is due, once each; return how many the sink accepted."""
        accepted = 0
        while True:
            # A delivery posted but not recorded is posted again once its lease runs out: its
            # record is tried for up to half the lease, while PostgreSQL is away.
            record_until = time.monotonic() + self._lease.total_seconds() / 2
            batch = await claim_or_hand_back(
                self._lease_due(), lambda taken: self._hand_back({item.id for item in taken})
            )
            unsettled = {delivery.id for delivery in batch}
            try:
                # Each delivery settles before a failure is raised: none is left running.
                outcomes = await asyncio.gather(
                    *(self._deliver(delivery, unsettled, record_until) for delivery in batch),
                    return_exceptions=True,
                )
            except asyncio.CancelledError:
                await self._hand_back(unsettled)
                raise
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            accepted += outcomes.count(True)
            if len(batch) < self._batch_size:
                return accepted

    async def _lease_due(self) -> list[SinkDelivery]:
        now = self._clock()
        async with self._pool.acquire() as conn:
            return await repository.claim_sink_deliveries(
                conn, now, now + self._lease, self._batch_size
            )

    async def _hand_back(self, delivery_ids: set[int]) -> None:
        """Make deliveries this process claimed but did not settle due again at once."""
        if not delivery_ids:
            return
        async with self._pool.acquire() as conn:
            await repository.release_sink_deliveries(conn, sorted(delivery_ids), self._clock())
        logger.info("released unsettled sink deliveries", extra={"count": len(delivery_ids)})

    async def prune_finished(self) -> int:
        """Delete deliveries given up on longer ago than the retention; return how many."""
        before = self._clock() - self._retention
        pruned = 0
        # One short statement per batch: no long transaction, no lock on the whole table.
        while True:
            async with self._pool.acquire() as conn:
                deleted = await repository.prune_finished_sink_deliveries(
                    conn, before, self._prune_batch_size
                )
            pruned += deleted
            if deleted < self._prune_batch_size:
                break
        if pruned:
            logger.info("pruned finished sink deliveries", extra={"count": pruned})
        return pruned

    async def run(self) -> None:
        """Deliver whenever woken or a retry falls due, and prune now and then, until cancelled."""
        rounds = FailingRounds(
            "sink delivery round", logger, RetryDelays(self._idle_interval, 30.0)
        )
        while True:
            self._wakeup.clear()
            try:
                await self.deliver_due()
                await self._prune_when_due()
                async with self._pool.acquire() as conn:
                    upcoming = await repository.next_sink_attempt(conn)
            except Exception as error:
                # Not cut short by a new comment: each would start a round that fails again.
                # Comments queued meanwhile go in the next round.
                await asyncio.sleep(rounds.failed(error))
                continue
            rounds.succeeded()
            delay = self._idle_interval
            if upcoming is not None:
                delay = max(0.0, min(delay, (upcoming - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _prune_when_due(self) -> None:
        # At start, then every `prune_interval`; a failed prune waits for the next one.
        now = self._clock()
        if self._next_prune_at is not None and now < self._next_prune_at:
            return
        self._next_prune_at = now + self._prune_interval
        await self.prune_finished()

    async def _deliver(
        self, delivery: SinkDelivery, unsettled: set[int], record_until: float
    ) -> bool:
        extra = {
            "correlation_id": delivery.correlation_id,
            "event_id": str(delivery.event_id),
            "attempt": delivery.attempts,
        }
        if delivery.superseded:
            logger.info(
                "older texts of the comment dropped unsent",
                extra={**extra, "superseded": delivery.superseded},
            )
        error = await self._post(delivery)
        now = self._clock()
        if error is None:
            outcome = "delivered"
        elif delivery.attempts >= self._max_attempts:
            outcome = "given_up"
        else:
            outcome = "failed"
        # Counted once posted, not once recorded: a POST whose record fails happened all the same.
        SINK_ATTEMPTS.labels(outcome).inc()

        async def record() -> None:
            async with self._pool.acquire() as conn:
                if error is None:
                    await repository.forget_sink_delivery(conn, delivery.id)
                elif outcome == "given_up":
                    await repository.give_up_sink_delivery(conn, delivery.id, error, now)
                else:
                    retry_at = now + self._backoff.after(delivery.attempts)
                    await repository.retry_sink_delivery_later(conn, delivery.id, error, retry_at)

        await retry_while_database_away(
            record, give_up_at=record_until, what="recording a sink delivery", extra=extra
        )
        unsettled.discard(delivery.id)
        if error is None:
            logger.info("delivered to the sink", extra=extra)
        elif outcome == "given_up":
            logger.error("sink delivery given up", extra={**extra, "error": error})
        else:
            logger.warning("sink delivery failed; will retry", extra={**extra, "error": error})
        return error is None

    async def _post(self, delivery: SinkDelivery) -> str | None:
        body = delivery.payload.decode()
        message_id = str(delivery.event_id)
        # Signed at send time: receivers refuse timestamps outside a few minutes.
        timestamp = self._clock()
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._signer.sign(message_id, timestamp, body),
        }
        try:
            # One bound on the whole POST: httpx's timeout is per phase and per read, so a
            # receiver dripping its answer would otherwise outlast the lease, and another
            # replica would post the comment's next text while this one is still in flight.
            async with asyncio.timeout(self._timeout):
                response = await self._http.post(
                    self._url, content=delivery.payload, headers=headers
                )
        except TimeoutError:
            return f"TimeoutError: no whole answer within {self._timeout:g} s"
        except Exception as failure:
            # Not only httpx's errors: one the transport raises instead (aiohttp refusing the
            # request) must count as a failed attempt too, or the delivery is never given up.
            return self._reason(failure)
        if 200 <= response.status_code < 300:
            return None
        # Only the status: a response body could echo anything, secrets included.
        return f"HTTP {response.status_code}"

    def _reason(self, failure: Exception) -> str:
        """Return `failure` as a short reason quoting no credential, path or query of the URL."""
        message = str(failure)
        for secret in self._url_secrets:
            message = message.replace(secret, "[redacted]")
        return f"{type(failure).__name__}: {message}"[:MAX_ERROR_LENGTH]


def _url_secrets(url: str) -> list[str]:
    """Return the parts of `url` a failure's message must not quote, longest first."""
    # A sink URL often carries its credential in the path or query (…/hooks/<token>).
    parsed = httpx.URL(url)
    parts = {
        url,
        str(parsed),
        str(parsed.copy_with(fragment=None)),
        parsed.userinfo.decode("ascii", "replace"),
        parsed.username,
        parsed.password or "",
        parsed.raw_path.decode("ascii", "replace"),
        parsed.path,
        parsed.query.decode("ascii", "replace"),
    }
    # "/" alone names nothing; an empty part would match everywhere.
    return sorted((part for part in parts if part not in ("", "/")), key=len, reverse=True)
