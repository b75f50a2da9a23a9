"""Measure how late deadlines fire, for thousands spread over a few seconds."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from webhook_tasks_contracts import DeadlineReached, TaskDispatched, TaskRef

from .stats import PhaseResult, Row, Summary
from .system import Context, Deployment, producer, reader

LIMIT_MS = 1000.0
"""Invariant 4 of the design: a task is expired within 1 s of its deadline (p99)."""


async def run(ctx: Context, deployment: Deployment) -> PhaseResult:
    """Feed the expirer deadlines through its input topic and watch its output topic."""
    plan = ctx.plan
    count = plan.expiries
    # A short fetch wait, so the observer adds little to what it observes.
    watcher = await reader(ctx.bootstrap, deployment.topics.deadline_reached, fetch_max_wait_ms=20)
    kafka = producer(ctx.bootstrap, idempotence=ctx.idempotence)
    await kafka.start()
    deadlines: dict[str, datetime] = {}
    try:
        first = datetime.now(UTC) + timedelta(seconds=plan.expiry_lead)
        pending = []
        for index in range(count):
            correlation_id = f"bench-{ctx.run_id}-x-{uuid.uuid4().hex[:12]}"
            deadline_at = first + timedelta(seconds=plan.expiry_spread * index / count)
            deadlines[correlation_id] = deadline_at
            # What the dispatcher publishes when an external service accepts a task.
            event = TaskDispatched(
                correlation_id=correlation_id,
                task=TaskRef(task_id=correlation_id, user_id="bench-user", project_id="p"),
                deadline_at=deadline_at,
                timeout_seconds=max(int(plan.expiry_lead), 1),
                webhook_host="127.0.0.1",
            )
            pending.append(
                await kafka.send(
                    deployment.topics.task_lifecycle,
                    event.model_dump_json().encode(),
                    key=correlation_id.encode(),
                )
            )
        await asyncio.gather(*pending)
        stored_by = datetime.now(UTC)

        tick = ctx.report(f"expirer: {count} deadlines", count)
        observed_ms: list[float] = []
        fired_ms: list[float] = []
        give_up = time.monotonic() + plan.expiry_lead + plan.expiry_spread + 30
        while len(observed_ms) < count and time.monotonic() < give_up:
            batches = await watcher.getmany(timeout_ms=200)
            seen_at = datetime.now(UTC)
            for records in batches.values():
                for record in records:
                    reached = DeadlineReached.model_validate_json(record.value)
                    due = deadlines.pop(reached.correlation_id, None)
                    if due is None:
                        continue  # not one of ours
                    observed_ms.append((seen_at - due).total_seconds() * 1000)
                    fired_ms.append((reached.occurred_at - due).total_seconds() * 1000)
                    tick(1)
    finally:
        await kafka.stop()
        await watcher.stop()

    observed = Summary.of(observed_ms)
    how = (
        f"{count} TaskDispatched events with deadlines {plan.expiry_lead:g} s to "
        f"{plan.expiry_lead + plan.expiry_spread:g} s ahead, evenly spread; lateness = "
        "DeadlineReached read back from Kafka minus deadline"
    )
    result = PhaseResult()
    result.rows = [
        Row("Expirer", "lateness p50", observed.p50, LIMIT_MS, "ms", "lower", "1 s target", how),
        Row("Expirer", "lateness p99", observed.p99, LIMIT_MS, "ms", "lower", "1 s target", how),
    ]
    result.samples_ms = {"expiry lateness": observed_ms}
    result.facts = {
        "deadlines": count,
        "observed": len(observed_ms),
        "missing": len(deadlines),
        "published_before_first_deadline_s": round((first - stored_by).total_seconds(), 3),
        "lateness_at_expirer_ms": asdict(Summary.of(fired_ms)),
        "lateness_observed_ms": asdict(observed),
    }
    return result
