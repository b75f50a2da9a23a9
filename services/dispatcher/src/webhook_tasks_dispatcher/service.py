"""What the dispatcher does with each input: dispatch a task, apply a callback or a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from pydantic import ValidationError
from webhook_tasks_contracts import (
    CallbackReceived,
    CallbackTokens,
    DeadlineReached,
    ErrorCallback,
    LifecycleEvent,
    ProgressCallback,
    SuccessCallback,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
    TaskRequested,
    TaskResultArrivedLate,
    Topics,
    build_webhook_request,
    callback_body_adapter,
    derived_event_id,
    utc_now,
)
from webhook_tasks_runtime.backoff import FailingRounds, RetryDelays
from webhook_tasks_runtime.catch_up import CatchUp, NoCatchUp
from webhook_tasks_runtime.db import DATABASE_AWAY, retry_while_database_away
from webhook_tasks_runtime.leases import claim_or_hand_back
from webhook_tasks_runtime.logging import correlation_context
from webhook_tasks_runtime.outbox import add_events_to_outbox
from webhook_tasks_runtime.tracing import context_from_traceparent, trace_headers, traceparent_of

from . import repository as repo
from .batching import GroupCommit
from .breaker import BreakerState, CircuitBreakers
from .client import DeliveryResult, OutboundRequest, WebhookClient, origin_of
from .domain import OPEN_STATUSES, TaskStatus, status_after_callback, why_not_applied
from .metrics import ATTEMPTS, DEADLINE_WAIT_SECONDS, REQUESTS_IN_FLIGHT
from .retry import GiveUp, Retry, RetryPolicy, is_retryable, parse_retry_after
from .sealing import RequestSealer, SealError
from .signing import SigningKeys, webhook_id_of

logger = logging.getLogger(__name__)

MAX_SAID_CHARS = 300
"""How much of an ignored callback's content its history line keeps."""

Clock = Callable[[], datetime]

_WAKE_MARGIN_SECONDS = 0.01


class Dispatcher:
    """The single writer of task state."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        webhooks: WebhookClient,
        tokens: CallbackTokens,
        callback_base_url: str,
        topics: Topics,
        after_commit: Callable[[], None],
        dispatch_lease: timedelta,
        clock: Clock = utc_now,
        retry: RetryPolicy | None = None,
        breakers: CircuitBreakers | None = None,
        signing: SigningKeys | None = None,
        sealer: RequestSealer,
        tracer: Tracer | None = None,
        max_in_flight: int = 256,
        callbacks_caught_up: CatchUp | None = None,
    ) -> None:
        self._pool = pool
        self._webhooks = webhooks
        self._tokens = tokens
        self._callback_base_url = callback_base_url
        self._topics = topics
        self._after_commit = after_commit
        self._lease = dispatch_lease
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._breakers = breakers or CircuitBreakers(cool_down=timedelta(seconds=30))
        self._signing = signing or SigningKeys({})
        self._tracer = tracer
        self._sealer = sealer
        # Callbacks and deadlines come on separate topics: a deadline waits for the callbacks
        # accepted before it, however far their consumer lags, so that they win as they should.
        self._callbacks_caught_up = callbacks_caught_up or NoCatchUp()
        self._due = asyncio.Event()
        # What this process held while a host's circuit was open (host -> correlation id ->
        # held until): made due at once when the circuit closes, not after its cool-down.
        self._held_for_circuit: dict[str, dict[str, datetime]] = {}
        # The same for requests held because every slot for their host was taken: one is
        # made due each time a request to that host ends, not 1-5 s later.
        self._held_for_slot: dict[str, dict[str, datetime]] = {}
        # Requests being sent, by consumers and the sender alike: at most `max_in_flight`.
        self._max_in_flight = max_in_flight
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0  # slots held by consumers between waiting and sending
        self._slot_freed = asyncio.Event()
        self._sender_lacks_slots = False  # the sender found none free: wake it when one is
        # Concurrent handlers share transactions: round trips per batch, not per task.
        self._claims = GroupCommit(self._record_claims)
        self._acceptances = GroupCommit(self._record_acceptances)

    async def dispatch(self, request: TaskRequested) -> None:
        """Record the task and send its request, once, whatever is redelivered."""
        sending = await self.accept(request)
        if sending is not None:
            await sending

    async def accept(self, request: TaskRequested) -> asyncio.Task[None] | None:
        """Record the task; return the sending of its request, begun, if it is sent now."""
        metadata = request.task_metadata
        if not metadata.is_webhook_task:
            logger.info("not a webhook task; ignored", extra={"task_id": request.task_id})
            return None
        assert metadata.webhook_url is not None  # guaranteed by TaskMetadata's validation
        with self._span(
            "dispatch task",
            SpanKind.CONSUMER,
            attributes={"webhook_tasks.task_id": request.task_id},
        ) as span:
            return await self._accept(request, metadata.webhook_url, traceparent_of(span))

    async def consume(self, request: TaskRequested) -> None:
        """Record the task of a consumed event and leave its request sending in the background."""
        # The consumer commits once a batch's tasks are recorded, not once every request is
        # answered: a slow external service holds up only its own requests. A request whose
        # sending dies with the process is sent again when its lease runs out.
        await self.accept(request)

    async def _accept(
        self, request: TaskRequested, webhook_url: str, traceparent: str | None
    ) -> asyncio.Task[None] | None:
        # A sync request waits for the result, up to the task's timeout: that is no work
        # for a consumer, so the background sender takes it at once.
        if request.task_metadata.mode == "sync":
            await self._record(request, webhook_url, inline=False, traceparent=traceparent)
            self._due.set()
            return None
        # Back-pressure comes before the claim: a claim's lease starts at once, and one that
        # ran out while waiting for a slot would be sent by another replica as well.
        await self._reserve_sending_slot()
        try:
            pending = await self._record(request, webhook_url, inline=True, traceparent=traceparent)
            return self._send_in_background(pending) if pending is not None else None
        finally:
            # Taken by the request now sending, or by none: either way no longer reserved.
            self._reserved -= 1
            self._slot_became_free()

    async def _record(
        self, request: TaskRequested, webhook_url: str, *, inline: bool, traceparent: str | None
    ) -> repo.PendingRequest | None:
        pending = await self._claim(
            request, webhook_url, now=self._clock(), inline=inline, traceparent=traceparent
        )
        if pending is None:
            logger.info(
                "duplicate task request; not dispatched again",
                extra={"task_id": request.task_id, "idempotency_key": request.idempotency_key},
            )
            return None
        # One INFO line per task comes with its outcome; this one is for following a task closely
        # (guarded: parsing the URL for a line that is not written cost CPU on every task).
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "dispatching task",
                extra={
                    "correlation_id": pending.correlation_id,
                    "task_id": request.task_id,
                    "webhook_host": _host(pending.webhook_url),
                    "mode": pending.mode,
                },
            )
        return pending

    async def _claim(
        self,
        request: TaskRequested,
        webhook_url: str,
        *,
        now: datetime,
        inline: bool,
        traceparent: str | None,
    ) -> repo.PendingRequest | None:
        metadata = request.task_metadata
        correlation_id = str(uuid.uuid4())
        # Also in the callback token: the gateway masks an echo before it reaches Kafka.
        fingerprints = (
            self._tokens.fingerprints.of(metadata.webhook_auth)
            if metadata.webhook_auth is not None
            else None
        )
        new_task = repo.NewTask(
            correlation_id=correlation_id,
            idempotency_key=request.idempotency_key,
            earlier_idempotency_key=_earlier_idempotency_key(request),
            task_id=request.task_id,
            user_id=request.user_id,
            project_id=request.project_id,
            assistant_id=request.assistant_id,
            followers=list(dict.fromkeys(request.followers)),
            webhook_url=webhook_url,
            mode=metadata.mode,
            timeout_seconds=metadata.timeout_seconds,
            auth_fingerprints=str(fingerprints) if fingerprints is not None else None,
        )
        body = build_webhook_request(
            correlation_id=correlation_id,
            callback_url=self._tokens.callback_url(
                self._callback_base_url,
                correlation_id,
                endpoint=metadata.callback_endpoint,
                echoes=fingerprints,
            ),
            prompt=request.prompt,
            task_id=request.task_id,
            user_id=request.user_id,
            project_id=request.project_id,
            params=metadata.webhook_params,
        )
        sync = metadata.mode == "sync"
        pending = repo.PendingRequest(
            correlation_id=correlation_id,
            webhook_url=webhook_url,
            mode=metadata.mode,
            body=json.dumps(body, separators=(",", ":")).encode(),
            # Kept sealed, in memory too: the plain value exists only while a request is built.
            auth=self._sealer.seal(correlation_id, metadata.webhook_auth)
            if metadata.webhook_auth is not None
            else None,
            attempts=0,
            timeout_seconds=metadata.timeout_seconds,
            pending_since=now,
            traceparent=traceparent,
        )
        lease = self._lease.total_seconds()
        if sync:
            # The sender holds a sync request for as long as it may wait for the answer.
            lease += metadata.timeout_seconds
        lease_until = now + timedelta(seconds=lease)
        recorded = await self._claims.submit(
            repo.Claim(
                task=new_task,
                request=pending,
                created_at=now,
                lease_until=lease_until,
                due_at=lease_until if inline else now,
                lease_seconds=lease,
            )
        )
        return pending if recorded else None

    async def _record_claims(self, claims: Sequence[repo.Claim]) -> list[bool]:
        async with self._pool.acquire() as conn:
            recorded = await repo.insert_tasks(conn, claims)
        return [claim.task.correlation_id in recorded for claim in claims]

    async def _record_acceptances(
        self, accepted: Sequence[repo.Acceptance]
    ) -> list[repo.TaskRow | None]:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = {row.correlation_id: row for row in await repo.settle_accepted(conn, accepted)}
            await self._queue(conn, [(_dispatched(row), row.traceparent) for row in rows.values()])
        self._after_commit()
        return [rows.get(item.correlation_id) for item in accepted]

    async def send_due(self, *, limit: int = 100) -> int:
        """Claim the requests that are due and send them; return how many were claimed."""
        async with self._pool.acquire() as conn:
            claimed = await repo.claim_due_requests(conn, now=self._clock(), limit=limit)
        await asyncio.gather(*(self._send_in_background(pending) for pending in claimed))
        return len(claimed)

    async def run_sender(
        self,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        shutdown_grace: float = 0.0,
        retry_delays: RetryDelays | None = None,
    ) -> None:
        """Send due requests (first sync requests and every retry) until cancelled."""
        # Cancelled, it gives the requests being sent `shutdown_grace` seconds to finish, then
        # stops the rest and makes them due at once, for the next process.
        rounds = FailingRounds(
            "claiming due requests", logger, retry_delays or RetryDelays(1.0, 10.0)
        )
        try:
            while True:
                free = self._max_in_flight - len(self._in_flight) - self._reserved
                self._sender_lacks_slots = free <= 0
                claimed: list[repo.PendingRequest] = []
                if free > 0:
                    try:
                        claimed = await claim_or_hand_back(
                            self._lease_due(min(free, batch_size)), self._hand_back_claimed
                        )
                    except Exception as error:
                        # The database is away (a restart, a failover): the due requests wait
                        # in it, and the process stays up to send them once it answers.
                        await asyncio.sleep(rounds.failed(error))
                        continue
                    rounds.succeeded()
                for pending in claimed:
                    self._send_in_background(pending)
                if len(claimed) < min(max(free, 1), batch_size):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._due.wait(), poll_interval)
                    self._due.clear()
        finally:
            await self._release(shutdown_grace)

    async def _hand_back_claimed(self, taken: list[repo.PendingRequest]) -> None:
        """Make requests this process claimed but did not send due again at once."""
        async with self._pool.acquire() as conn:
            await repo.release_requests(
                conn, [pending.correlation_id for pending in taken], now=self._clock()
            )
        logger.info("released claimed requests", extra={"count": len(taken)})

    async def _lease_due(self, limit: int) -> list[repo.PendingRequest]:
        async with self._pool.acquire() as conn:
            return await repo.claim_due_requests(conn, now=self._clock(), limit=limit)

    async def drain(self) -> None:
        """Wait until no request is being sent."""
        while self._in_flight:
            await asyncio.wait(list(self._in_flight.values()))

    async def _reserve_sending_slot(self) -> None:
        """Wait for a free sending slot and reserve it; the caller gives the reservation up."""
        # Not an @asynccontextmanager: its generator cost about 2 µs more on every task consumed.
        while len(self._in_flight) + self._reserved >= self._max_in_flight:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._reserved += 1

    def _send_in_background(self, pending: repo.PendingRequest) -> asyncio.Task[None]:
        task = asyncio.create_task(self._attempt_logged(pending))
        self._in_flight[pending.correlation_id] = task
        REQUESTS_IN_FLIGHT.inc()
        task.add_done_callback(functools.partial(self._sent, pending))
        return task

    def _sent(self, pending: repo.PendingRequest, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(pending.correlation_id) is task:
            del self._in_flight[pending.correlation_id]
        REQUESTS_IN_FLIGHT.dec()
        self._slot_became_free()
        if not task.cancelled():
            # Logged by the task; taken here so nobody has to await it.
            task.exception()

    def _slot_became_free(self) -> None:
        self._slot_freed.set()
        if self._sender_lacks_slots:
            # Only then: waking the sender after every request would cost a query for due
            # rows each time.
            self._sender_lacks_slots = False
            self._due.set()

    async def _release(self, grace: float) -> None:
        if not self._in_flight:
            return
        if grace > 0:
            await asyncio.wait(list(self._in_flight.values()), timeout=grace)
        unfinished = dict(self._in_flight)
        if not unfinished:
            return
        for task in unfinished.values():
            task.cancel()
        await asyncio.gather(*unfinished.values(), return_exceptions=True)
        # Unfinished requests are due again at once, for the next process, not after a lease.
        async with self._pool.acquire() as conn:
            await repo.release_requests(conn, list(unfinished), now=self._clock())
        logger.info("released unfinished requests", extra={"count": len(unfinished)})

    async def _attempt_logged(self, pending: repo.PendingRequest) -> None:
        with correlation_context(pending.correlation_id):
            started = self._clock()
            try:
                await self._attempt(pending)
            except _AnswerNotRecordedError as unrecorded:
                # Not a failed attempt: recorded as one once PostgreSQL is back, it would
                # count against the limit and could fail a task the service accepted.
                logger.warning(
                    "the answer could not be recorded while PostgreSQL was away; the request "
                    "goes again once its claim runs out",
                    extra={"outcome": unrecorded.outcome, "error": str(unrecorded.__cause__)},
                )
            except Exception as error:
                logger.exception("sending a request failed in the dispatcher")
                # Recorded as an attempt, so a failure that recurs every time meets the
                # attempt limit rather than resending the request each time a lease runs out.
                failed = DeliveryResult(
                    "failed", 0.0, error=f"internal error: {type(error).__name__}"
                )
                ATTEMPTS.labels(failed.outcome).inc()
                try:
                    await self._settle_dispatch(pending, started, failed)
                except Exception:
                    # The claim runs out and the request comes due again; nothing is lost.
                    logger.exception("recording the failure failed; the request will be retried")
                    raise

    async def _attempt(self, pending: repo.PendingRequest) -> None:
        # One breaker per server: two services on one host name but other ports fail apart.
        origin = origin_of(pending.webhook_url)
        now = self._clock()
        wait_until = self._breakers.permit(origin, now)
        if wait_until is not None:
            if self._retry.too_late(wait_until, pending_since=pending.pending_since):
                self._no_longer_held(origin, pending.correlation_id)
                await self._give_up_held(
                    pending,
                    now,
                    f"not sent: the circuit for {origin} is open, as its last requests failed",
                )
                return
            await self._hold(pending, wait_until, f"waiting: circuit open for {origin}")
            if self._breakers.state(origin) is BreakerState.CLOSED:
                # The circuit closed while this request was being held: it need not wait.
                await self._release_held(
                    origin, {pending.correlation_id: wait_until}, because="circuit closed"
                )
            else:
                self._held_for_circuit.setdefault(origin, {})[pending.correlation_id] = wait_until
            return
        self._no_longer_held(origin, pending.correlation_id)  # it goes now
        try:
            auth = self._sealer.open(pending.correlation_id, pending.auth) if pending.auth else None
        except SealError as error:
            ATTEMPTS.labels("refused").inc()
            await self._settle_dispatch(
                pending, now, DeliveryResult("refused", 0.0, error=str(error))
            )
            return
        # Every attempt, retries by another process included, is a span of the dispatch's trace.
        with self._span(
            "POST",
            SpanKind.CLIENT,
            context=context_from_traceparent(pending.traceparent),
            attributes={
                "http.request.method": "POST",
                "server.address": _host(pending.webhook_url),
                "webhook_tasks.correlation_id": pending.correlation_id,
                "webhook_tasks.attempt": pending.attempts + 1,
            },
        ) as span:
            result = await self._webhooks.send(
                OutboundRequest(
                    url=pending.webhook_url,
                    body=pending.body,
                    webhook_id=webhook_id_of(pending.correlation_id),
                    auth=auth,
                    signing_key=self._signing.key_for(pending.webhook_url),
                    timeout_seconds=pending.timeout_seconds if pending.mode == "sync" else None,
                    trace_headers=trace_headers(span),
                ),
                now=now,
            )
            _describe_span(span, result)
        if result.outcome == "busy":
            # Not an attempt: the host is answering others. Queued in the database, not here.
            until = self._clock() + timedelta(seconds=self._retry.rng.uniform(1.0, 5.0))
            if self._retry.too_late(until, pending_since=pending.pending_since):
                await self._give_up_held(pending, now, f"not sent: {result.error} at {origin}")
                return
            await self._hold(pending, until, f"waiting: {origin} {result.error}")
            self._held_for_slot.setdefault(origin, {})[pending.correlation_id] = until
            return
        ATTEMPTS.labels(result.outcome).inc()
        # A refused URL never reached the host: it says nothing about the host's health.
        closed = result.outcome != "refused" and self._breakers.record(
            origin,
            failed=result.outcome == "unreachable"
            or (result.outcome == "rejected" and is_retryable(result.status_code)),
            now=self._clock(),
        )
        await self._settle_dispatch_retrying(pending, now, result)
        # The attempt is recorded: what follows frees other requests, and its failure is none
        # of this attempt's. Those requests then go when their hold ends, as recorded.
        try:
            if closed:
                await self._resume_held(origin)
            await self._resume_one_waiting_for_slot(origin)
        except Exception:
            logger.exception("releasing held requests early failed; they go when their hold ends")

    async def _settle_dispatch_retrying(
        self, pending: repo.PendingRequest, started: datetime, result: DeliveryResult
    ) -> None:
        """Record what an attempt came to; while the database is away, try again for a while.

        Sent and answered, the request need not go out again: it would if the answer were
        dropped, once its lease ran out. Past half the lease, it is left to that.
        """
        spent = (self._clock() - started).total_seconds()
        try:
            await retry_while_database_away(
                lambda: self._settle_dispatch(pending, started, result),
                give_up_at=time.monotonic() + self._lease.total_seconds() / 2 - spent,
                what="recording the answer",
                extra={"outcome": result.outcome},
            )
        except DATABASE_AWAY as error:
            raise _AnswerNotRecordedError(result.outcome) from error

    def _span(
        self,
        name: str,
        kind: SpanKind,
        *,
        context: Context | None = None,
        attributes: dict[str, str | int] | None = None,
    ) -> AbstractContextManager[Span]:
        if self._tracer is None:
            return contextlib.nullcontext(INVALID_SPAN)
        return self._tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=attributes
        )

    def _no_longer_held(self, origin: str, correlation_id: str) -> None:
        """Forget that this process held the request for `origin` (its circuit, or a slot)."""
        for holds in (self._held_for_circuit, self._held_for_slot):
            held = holds.get(origin)
            if held is not None:
                held.pop(correlation_id, None)

    async def _give_up_held(self, pending: repo.PendingRequest, now: datetime, why: str) -> None:
        """Fail a task whose request would be held past its pending limit: not sent, unreachable."""
        ATTEMPTS.labels("unreachable").inc()
        await self._settle_dispatch(
            pending,
            now,
            DeliveryResult("unreachable", 0.0, error=f"{why}; {self._retry.too_late_reason}"),
            give_up=True,
        )

    async def _hold(self, pending: repo.PendingRequest, until: datetime, reason: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.reschedule_request(
                conn, pending.correlation_id, attempts=pending.attempts, due_at=until
            )
            await repo.note_waiting(conn, pending.correlation_id, now=self._clock(), reason=reason)
        self._wake_sender_at(until)
        logger.info(
            "request held",
            extra={"correlation_id": pending.correlation_id, "reason": reason, "until": until},
        )

    async def _resume_held(self, origin: str) -> None:
        """Make due now what this process held for `origin`'s circuit."""
        held = self._held_for_circuit.pop(origin, None)
        if held:
            await self._release_held(origin, held, because="circuit closed")

    async def _resume_one_waiting_for_slot(self, origin: str) -> None:
        """Make due now the request held longest for a slot at `origin`, if any (one freed)."""
        held = self._held_for_slot.get(origin)
        if not held:
            return
        correlation_id = next(iter(held))
        until = held.pop(correlation_id)
        if not held:
            del self._held_for_slot[origin]
        await self._release_held(origin, {correlation_id: until}, because="a slot freed")

    async def _release_held(self, origin: str, held: dict[str, datetime], *, because: str) -> None:
        """Make due now the requests `held` (correlation id -> held until), and wake the sender."""
        async with self._pool.acquire() as conn:
            released = await repo.release_held_requests(conn, held, now=self._clock())
        if released:
            self._due.set()
            logger.info(
                "held requests are due again",
                extra={"webhook_host": origin, "requests": released, "because": because},
            )

    def _wake_sender_at(self, moment: datetime) -> None:
        """Have the sender look for due requests once `moment` has come."""
        # Else a retry this process scheduled waits for the sender's next poll, up to
        # SENDER_POLL_INTERVAL late: a 1 s backoff could become 2 s. Retries that other
        # replicas scheduled are still found by polling. The margin keeps a timer that
        # fires a little early from finding the request not yet due.
        delay = max((moment - self._clock()).total_seconds(), 0.0) + _WAKE_MARGIN_SECONDS
        asyncio.get_running_loop().call_later(delay, self._due.set)

    async def _settle_dispatch(
        self,
        pending: repo.PendingRequest,
        started: datetime,
        result: DeliveryResult,
        *,
        give_up: bool = False,
    ) -> None:
        now = self._clock()
        attempt = pending.attempts + 1
        if result.outcome == "accepted" and pending.mode == "callback":
            await self._settle_acceptance(pending, started, result, now)
            return
        decision: Retry | GiveUp | None = None
        if result.outcome != "accepted":
            if (
                give_up
                or result.outcome == "refused"
                or (pending.mode == "sync" and result.timed_out)
            ):
                decision = GiveUp(result.reason)
            else:
                decision = self._retry.after_failure(
                    attempts_made=attempt,
                    status_code=result.status_code,
                    retry_after_seconds=parse_retry_after(result.retry_after, now=now),
                    now=now,
                    pending_since=pending.pending_since,
                )
        events: list[LifecycleEvent] = []
        async with self._pool.acquire() as conn, conn.transaction():
            retry_at = decision.at if isinstance(decision, Retry) else None
            await repo.record_attempt(
                conn, pending.correlation_id, started, result, retry_at=retry_at
            )
            if isinstance(decision, Retry):
                await repo.reschedule_request(
                    conn, pending.correlation_id, attempts=attempt, due_at=decision.at
                )
                await repo.note_waiting(
                    conn,
                    pending.correlation_id,
                    now=now,
                    reason=f"attempt {attempt + 1} of {self._retry.max_attempts} due at "
                    f"{decision.at.isoformat(timespec='seconds')} after {_short(result)}",
                )
            else:
                await repo.forget_request(conn, pending.correlation_id)
                shown = decision.why if isinstance(decision, GiveUp) and decision.shown else None
                events = await self._conclude(conn, pending, result, now, also=shown)
            await self._queue(conn, [(event, pending.traceparent) for event in events])
        self._after_commit()
        if isinstance(decision, Retry):
            self._wake_sender_at(decision.at)
        logger.info(
            "external service accepted the task"
            if result.outcome == "accepted"
            else ("dispatch failed; will retry" if retry_at else "dispatch failed"),
            extra={
                "correlation_id": pending.correlation_id,
                "attempt": attempt,
                "outcome": result.outcome,
                "status_code": result.status_code,
                "latency_ms": round(result.latency_ms, 1),
                "error": result.error,
                "retry_at": retry_at,
            },
        )

    async def _settle_acceptance(
        self, pending: repo.PendingRequest, started: datetime, result: DeliveryResult, now: datetime
    ) -> None:
        ack = result.ack
        row = await self._acceptances.submit(
            repo.Acceptance(
                correlation_id=pending.correlation_id,
                started_at=started,
                result=result,
                settled_at=now,
                deadline_at=now + timedelta(seconds=pending.timeout_seconds),
                ack_status=ack.status if ack else None,
                estimated_completion=ack.estimated_completion if ack else None,
            )
        )
        logger.info(
            "external service accepted the task"
            if row is not None
            else "external service accepted the task; a callback had already moved it",
            extra={
                "correlation_id": pending.correlation_id,
                "webhook_host": _host(pending.webhook_url),
                "attempt": pending.attempts + 1,
                "outcome": result.outcome,
                "status_code": result.status_code,
                "latency_ms": round(result.latency_ms, 1),
            },
        )

    async def _conclude(
        self,
        conn: asyncpg.Connection,
        pending: repo.PendingRequest,
        result: DeliveryResult,
        now: datetime,
        *,
        also: str | None = None,
    ) -> list[LifecycleEvent]:
        """Record how the task's request ended; `also` says more on why it failed."""
        cid = pending.correlation_id
        if result.outcome != "accepted":
            reason = f"{result.reason}; {also}" if also else result.reason
            row = await repo.finish(conn, cid, TaskStatus.FAILED, now=now, reason=reason)
            return [_failed_dispatch(row, result, reason)] if row is not None else []
        # Accepted in callback mode is settled in batches (_settle_acceptance): this is sync,
        # whose answer is the result itself.
        row = await repo.mark_initiated(
            conn, cid, now=now, deadline_at=now + timedelta(seconds=pending.timeout_seconds)
        )
        if row is None:
            return []  # a callback got there first
        return [_dispatched(row), *await self._finish_sync(conn, row, result, now)]

    async def _finish_sync(
        self, conn: asyncpg.Connection, row: repo.TaskRow, result: DeliveryResult, now: datetime
    ) -> list[LifecycleEvent]:
        answer = parse_sync_result(row.correlation_id, result)
        if isinstance(answer, str):
            done = await repo.finish(
                conn, row.correlation_id, TaskStatus.FAILED, now=now, reason=answer
            )
            if done is None:
                return []
            return [
                TaskFailed(
                    event_id=derived_event_id(done.correlation_id, "terminal"),
                    correlation_id=done.correlation_id,
                    task=_ref(done),
                    cause="dispatch_rejected",
                    reason=answer,
                )
            ]
        callback = CallbackReceived(
            correlation_id=row.correlation_id,
            status=answer.status,
            result_url=getattr(answer, "result_url", None),
            metadata=getattr(answer, "metadata", {}),
            error=getattr(answer, "error", None),
        )
        target = status_after_callback(callback.status)
        assert target is not None
        done = await _finish_as_reported(conn, callback, target, now)
        return [_finished_by_callback(done, callback)] if done is not None else []

    async def apply_callback(self, callback: CallbackReceived) -> None:
        """Apply a callback to its task if the task is still open; record it either way."""
        started = time.time_ns()
        now = self._clock()
        target = status_after_callback(callback.status)
        kind = f"callback:{callback.status}"
        async with self._pool.acquire() as conn, conn.transaction():
            sighting = await self._first_sighting(
                conn, callback.event_id, callback.correlation_id, kind
            )
            if not sighting.first:
                return
            callback = await self._without_echoed_auth(callback, sighting)
            before = sighting.status
            if _accepted_after_deadline(callback, sighting):
                before = (
                    await self._expire_first(conn, callback.correlation_id, sighting, now) or before
                )
            if target is None:
                row = await repo.record_progress(
                    conn,
                    callback.correlation_id,
                    now=now,
                    taken_at=callback.occurred_at,
                    progress=callback.progress,
                    message=callback.message,
                )
                event: LifecycleEvent | None = (
                    _progressed(row, callback) if row is not None else None
                )
            else:
                # Finished while a retry was still scheduled, the request is dropped with it.
                row = await _finish_as_reported(conn, callback, target, now)
                event = _finished_by_callback(row, callback) if row is not None else None
            if row is None and before is TaskStatus.EXPIRED and target is TaskStatus.COMPLETED:
                await self._record_late_result(conn, callback)
            else:
                await self._settle(
                    conn, callback.event_id, kind, before, row, event, said=_what_it_said(callback)
                )
        # Only now is the transaction committed: the relay may publish what it queued.
        self._after_commit()
        self._trace_application(kind, callback.correlation_id, sighting, row, started)

    async def _expire_first(
        self,
        conn: asyncpg.Connection,
        correlation_id: str,
        sighting: repo.Sighting,
        now: datetime,
    ) -> TaskStatus | None:
        """Expire the task as its deadline would have; return its new state if it did."""
        assert sighting.deadline_at is not None
        # The gateway took this callback after the task's deadline, which this process had
        # not applied (it was stopped, or behind). Applied now, it decides as it would have
        # on time: the task expires, and the callback is a late one.
        row = await repo.finish(
            conn,
            correlation_id,
            TaskStatus.EXPIRED,
            now=now,
            reason="no callback before the deadline",
            only_if_deadline_not_after=sighting.deadline_at,
        )
        if row is None:
            return None
        expiry = derived_event_id(row.correlation_id, "deadline", sighting.deadline_at.isoformat())
        await repo.lock_and_record(
            conn, event_id=str(expiry), correlation_id=row.correlation_id, kind="deadline", now=now
        )
        await self._settle(
            conn,
            expiry,
            "deadline",
            sighting.status,
            row,
            _expired(row),
            detail="the deadline passed before the gateway took the callback handled with it",
        )
        return row.status

    async def _without_echoed_auth(
        self, callback: CallbackReceived, sighting: repo.Sighting
    ) -> CallbackReceived:
        """Return `callback` with the task's webhookAuth masked wherever the service echoed it."""
        if sighting.auth_fingerprints is None:
            return callback
        # In a worker thread: a callback of a MiB takes seconds to look through, which would
        # hold up every other task of this process.
        masked = await asyncio.to_thread(
            self._tokens.fingerprints.mask_callback, callback, sighting.auth_fingerprints
        )
        if masked is not callback:
            # Under a token minted with the fingerprints, the gateway has masked it already.
            logger.warning("the callback echoed the task's webhookAuth; it is masked")
        return masked

    async def _record_late_result(
        self, conn: asyncpg.Connection, callback: CallbackReceived
    ) -> None:
        # The outcome stays "expired"; the first late result still reaches the users, marked late.
        row = await repo.record_late_result(
            conn,
            callback.correlation_id,
            now=self._clock(),
            result_url=callback.result_url,
            result_metadata=callback.metadata,
        )
        detail = (
            "success arrived after the task expired; shown to its users as a late result"
            if row is not None
            else "another success arrived after the task expired; a late result is already shown"
            f"; it said: {_what_it_said(callback)}"
        )
        await repo.settle_history(
            conn,
            str(callback.event_id),
            applied=False,
            detail=detail,
            from_status=TaskStatus.EXPIRED.value,
            to_status=TaskStatus.EXPIRED.value,
        )
        if row is not None:
            await self._queue(conn, [(_late_result(row, callback), row.traceparent)])
        logger.info("late result recorded", extra={"shown": row is not None})

    async def apply_deadline(self, deadline: DeadlineReached) -> None:
        """Expire the task if still open and unmoved after the callbacks accepted before it."""
        with DEADLINE_WAIT_SECONDS.time():
            await self._callbacks_caught_up.wait(
                deadline.correlation_id, deadline.deadline_at.timestamp()
            )
        started = time.time_ns()
        now = self._clock()
        kind = "deadline"
        async with self._pool.acquire() as conn, conn.transaction():
            sighting = await self._first_sighting(
                conn, deadline.event_id, deadline.correlation_id, kind
            )
            if not sighting.first:
                return
            row = await repo.finish(
                conn,
                deadline.correlation_id,
                TaskStatus.EXPIRED,
                now=now,
                reason="no callback before the deadline",
                only_if_deadline_not_after=deadline.deadline_at,
            )
            event = _expired(row) if row is not None else None
            await self._settle(conn, deadline.event_id, kind, sighting.status, row, event)
        self._after_commit()
        self._trace_application(kind, deadline.correlation_id, sighting, row, started)

    async def _first_sighting(
        self, conn: asyncpg.Connection, event_id: object, correlation_id: str, kind: str
    ) -> repo.Sighting:
        """Lock the task, record the event; return whether it is new, the task's state and trace."""
        # Locking the task row makes a callback and a deadline for one task take turns.
        sighting = await repo.lock_and_record(
            conn,
            event_id=str(event_id),
            correlation_id=correlation_id,
            kind=kind,
            now=self._clock(),
        )
        if not sighting.first:
            logger.info("event seen before; nothing to do", extra={"event_id": str(event_id)})
        return sighting

    def _trace_application(
        self,
        kind: str,
        correlation_id: str,
        sighting: repo.Sighting,
        row: repo.TaskRow | None,
        started_ns: int,
    ) -> None:
        # A span in the task's dispatch trace, so the trace shows how the task ended; made
        # after the commit, and only for a task whose dispatch was traced.
        if self._tracer is None or sighting.traceparent is None:
            return
        before = sighting.status.value if sighting.status else "unknown"
        span = self._tracer.start_span(
            f"apply {kind.partition(':')[0]}",
            context=context_from_traceparent(sighting.traceparent),
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "webhook_tasks.correlation_id": correlation_id,
                "webhook_tasks.event": kind,
                "webhook_tasks.status.before": before,
                "webhook_tasks.status.after": row.status.value if row is not None else before,
            },
        )
        span.end()

    async def _settle(
        self,
        conn: asyncpg.Connection,
        event_id: object,
        kind: str,
        before: TaskStatus | None,
        row: repo.TaskRow | None,
        event: LifecycleEvent | None,
        *,
        said: str | None = None,
        detail: str | None = None,
    ) -> None:
        if row is not None and event is not None:
            await repo.settle_history(
                conn,
                str(event_id),
                applied=True,
                detail=detail,
                from_status=before.value if before else None,
                to_status=row.status.value,
            )
            await self._queue(conn, [(event, row.traceparent)])
            logger.info(
                f"{kind} applied", extra={"from_status": before, "to_status": row.status.value}
            )
            return
        # The task row is locked, so `before` is still its state: that is why nothing applied.
        ignored = why_not_applied(before, kind)
        # What an ignored callback said is kept nowhere else: the history shows it.
        await repo.settle_history(
            conn,
            str(event_id),
            applied=False,
            detail=f"{ignored.reason}; it said: {said}" if said else ignored.reason,
            from_status=before.value if before else None,
            to_status=before.value if before else None,
        )
        logger.info(f"{kind} ignored", extra={"reason": ignored.reason})

    async def _queue(
        self, conn: asyncpg.Connection, events: Sequence[tuple[LifecycleEvent, str | None]]
    ) -> None:
        # Each event continues the trace of its task's dispatch, when tracing is on.
        await add_events_to_outbox(
            conn,
            self._topics.task_lifecycle,
            [event for event, _ in events],
            traceparents=[traceparent for _, traceparent in events],
        )


def parse_sync_result(
    correlation_id: str, result: DeliveryResult
) -> SuccessCallback | ErrorCallback | str:
    """Read a sync task's result from the answer, as a callback body; a str says why not."""
    if result.truncated:
        return "the external service's answer was larger than the dispatcher accepts"
    if result.undecoded:
        return (
            f"the external service's answer was compressed as {result.undecoded[:40]}, which the"
            " dispatcher cannot read (it asks for answers uncompressed)"
        )
    try:
        data = json.loads(result.body, parse_constant=_not_finite, parse_float=_finite)
    except _NotFiniteError:
        # PostgreSQL's jsonb has no NaN or Infinity: stored, such a result would fail the
        # write and the request would be sent again, answered again, and fail the same way.
        return (
            "the external service's answer held a number JSON cannot carry"
            " (NaN, Infinity, or beyond 1.8e308)"
        )
    except ValueError:
        return "the external service's answer was not JSON"
    if not isinstance(data, dict):
        return "the external service's answer was not a JSON object"
    # The product summary's sync answer need not repeat the id we sent; it is this task's.
    data["correlationId"] = correlation_id
    try:
        answer = callback_body_adapter.validate_python(data)
    except ValidationError as error:
        if data.get("status") not in ("success", "error", "progress"):
            return "the external service's answer had no result (expected status success or error)"
        # Which field, and why: never the value, which may be anything the service sent.
        first = error.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "the answer"
        why = first["msg"].removeprefix("Value error, ")
        return f"the external service's result was invalid: {where}: {why}"
    if isinstance(answer, ProgressCallback):
        return "the external service answered with progress instead of a result"
    return answer


class _AnswerNotRecordedError(Exception):
    """An attempt's outcome could not be recorded before half its claim had passed."""

    def __init__(self, outcome: str) -> None:
        super().__init__(f"the {outcome} answer could not be recorded")
        self.outcome = outcome


class _NotFiniteError(ValueError):
    """A JSON number with no finite value."""


def _not_finite(constant: str) -> float:
    raise _NotFiniteError(constant)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotFiniteError(text)
    return number


async def _finish_as_reported(
    conn: asyncpg.Connection, callback: CallbackReceived, target: TaskStatus, now: datetime
) -> repo.TaskRow | None:
    """Move the task to `target`, keeping the result or error the callback reports."""
    return await repo.finish(
        conn,
        callback.correlation_id,
        target,
        now=now,
        reason=callback.error if target is TaskStatus.FAILED else None,
        result_url=callback.result_url,
        result_metadata=callback.metadata if target is TaskStatus.COMPLETED else None,
    )


def _describe_span(span: Span, result: DeliveryResult) -> None:
    if result.status_code is not None:
        span.set_attribute("http.response.status_code", result.status_code)
    if result.outcome != "accepted":
        span.set_status(Status(StatusCode.ERROR, result.outcome))


def _short(result: DeliveryResult) -> str:
    if result.status_code is not None:
        return f"HTTP {result.status_code}"
    return result.error or result.outcome


def _ref(row: repo.TaskRow) -> TaskRef:
    return TaskRef(
        task_id=row.task_id,
        user_id=row.user_id,
        project_id=row.project_id,
        assistant_id=row.assistant_id,
        followers=tuple(row.followers),
    )


@functools.lru_cache(maxsize=4096)
def _host(url: str) -> str:
    return urlsplit(url).hostname or "unknown"


def _what_it_said(callback: CallbackReceived) -> str:
    if callback.status == "success":
        said = f"result {callback.result_url}" if callback.result_url else "success, no result URL"
    elif callback.status == "error":
        said = f"error {callback.error!r}"
    else:
        progress = "" if callback.progress is None else f" {callback.progress:g}%"
        said = f"progress{progress}" + (f" {callback.message!r}" if callback.message else "")
    return said if len(said) <= MAX_SAID_CHARS else said[: MAX_SAID_CHARS - 1] + "…"


def _dispatched(row: repo.TaskRow) -> TaskDispatched:
    assert row.deadline_at is not None
    return TaskDispatched(
        event_id=derived_event_id(row.correlation_id, "dispatched"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        timeout_seconds=row.timeout_seconds,
        webhook_host=_host(row.webhook_url),
        ack_status=row.ack_status,
        estimated_completion=row.estimated_completion,
        mode="sync" if row.mode == "sync" else "callback",
    )


def _failed_dispatch(row: repo.TaskRow, result: DeliveryResult, reason: str) -> TaskFailed:
    return TaskFailed(
        event_id=derived_event_id(row.correlation_id, "terminal"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        # A refused URL is ours to refuse, like a 4xx: the request itself is wrong.
        cause="dispatch_unreachable" if result.outcome == "unreachable" else "dispatch_rejected",
        reason=reason,
    )


def _progressed(row: repo.TaskRow, callback: CallbackReceived) -> TaskProgressed:
    assert row.deadline_at is not None
    return TaskProgressed(
        event_id=derived_event_id(row.correlation_id, "progress", callback.event_id),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        progress=callback.progress,
        message=callback.message,
    )


def _finished_by_callback(
    row: repo.TaskRow, callback: CallbackReceived
) -> TaskCompleted | TaskFailed:
    event_id = derived_event_id(row.correlation_id, "terminal")
    if row.status is TaskStatus.COMPLETED:
        return TaskCompleted(
            event_id=event_id,
            correlation_id=row.correlation_id,
            task=_ref(row),
            result_url=callback.result_url,
            metadata=callback.metadata,
        )
    return TaskFailed(
        event_id=event_id,
        correlation_id=row.correlation_id,
        task=_ref(row),
        cause="callback_error",
        reason=callback.error or "The external service reported an error.",
    )


def _late_result(row: repo.TaskRow, callback: CallbackReceived) -> TaskResultArrivedLate:
    return TaskResultArrivedLate(
        event_id=derived_event_id(row.correlation_id, "late-result"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        result_url=callback.result_url,
        metadata=callback.metadata,
    )


def _earlier_idempotency_key(request: TaskRequested) -> str | None:
    """Return the key releases before migration 0008 gave `request`, where it differs."""
    # While such a release still runs beside this one (a rolling upgrade), it records the
    # task under that key: the same event must not be dispatched again here.
    earlier = f"{request.task_id}/{request.request_id or request.event_id}"
    return earlier if earlier != request.idempotency_key else None


CLOCK_SKEW_ALLOWANCE = timedelta(seconds=1)
"""How far the gateway's clock may run ahead of the dispatcher's: a callback stamped within
this of a deadline is taken as on time."""


def _accepted_after_deadline(callback: CallbackReceived, sighting: repo.Sighting) -> bool:
    """Tell whether the gateway took `callback` after the deadline of an open task."""
    return (
        sighting.status in OPEN_STATUSES
        and sighting.deadline_at is not None
        and callback.occurred_at > sighting.deadline_at + CLOCK_SKEW_ALLOWANCE
    )


def _expired(row: repo.TaskRow) -> TaskExpired:
    assert row.deadline_at is not None
    return TaskExpired(
        event_id=derived_event_id(row.correlation_id, "terminal"),
        correlation_id=row.correlation_id,
        task=_ref(row),
        deadline_at=row.deadline_at,
        timeout_seconds=row.timeout_seconds,
    )
