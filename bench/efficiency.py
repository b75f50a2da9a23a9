"""Compare the worker time a task holds under the callback pattern and a synchronous call."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

from .endtoend import publish_stream, wait_comments
from .load import closed_loop
from .plan import SYNC_CLAIM_SECONDS
from .stats import PhaseResult, Row, Summary
from .system import Context, Deployment, fetch, sink_records

_HELD = """
SELECT extract(epoch FROM dispatched_at - created_at) * 1000 AS held_ms
FROM dispatcher.tasks WHERE task_id LIKE $1 AND dispatched_at IS NOT NULL
"""


async def run(ctx: Context, deployment: Deployment) -> PhaseResult:
    """Run the same slow job both ways at once and time what each keeps a worker busy for."""
    plan = ctx.plan
    delay = plan.sync_delay
    prefix = f"bench-{ctx.run_id}-s-"
    ids = [f"{prefix}{index}" for index in range(plan.sync_tasks)]
    body = json.dumps({"prompt": "a benchmark task", "taskId": "sync"}).encode()

    async def callback_pattern() -> dict[str, float]:
        return await publish_stream(
            ctx, deployment, ids, f"{ctx.sink.url}/callback?delay={delay:g}", rate=50
        )

    async def synchronous() -> list[float]:
        # A worker that calls the service and waits for the result, as the sync mode would.
        outcome = await closed_loop(
            [(f"{ctx.sink.url}/sync?delay={delay:g}", body)],
            concurrency=plan.sync_tasks,
            duration=delay + 30,
            max_requests=plan.sync_tasks,
        )
        return outcome.latencies_ms

    published, sync_ms = await asyncio.gather(callback_pattern(), synchronous())
    comments = await wait_comments(
        ctx,
        prefix,
        len(ids),
        within=delay + 60,
        tick=ctx.report(f"efficiency: {len(ids)} jobs of {delay:g} s, both ways", len(ids)),
    )
    await sink_records(ctx.sink.url)
    held_ms = [
        float(row["held_ms"]) for row in await fetch(ctx.infra.database_url, _HELD, f"{prefix}%")
    ]
    # The synchronous wait is the job's duration plus the call's own overhead; state it for 20 s.
    sync_at_claim = [value - delay * 1000 + SYNC_CLAIM_SECONDS * 1000 for value in sync_ms]
    completion = [
        float(str(row["committed"])) * 1000 - published[str(row["task_id"])] * 1000
        for row in comments
        if str(row["task_id"]) in published
    ]
    held, sync = Summary.of(held_ms), Summary.of(sync_at_claim)
    measured = (
        f"a real {delay:g} s wait"
        if delay == SYNC_CLAIM_SECONDS
        else f"a {delay:g} s job, its overhead added to 20 s"
    )
    result = PhaseResult()
    result.rows = [
        Row(
            "Efficiency",
            "worker time per task",
            held.p50,
            sync.p50,
            "ms",
            "lower",
            "sync call, 20 s job",
            f"{len(held_ms)} callback tasks: dispatcher's claim to commit of 'initiated' "
            f"(tasks.created_at → dispatched_at); sync: {len(sync_ms)} bare aiohttp calls "
            f"held for {measured}; medians",
        )
    ]
    result.samples_ms = {"callback: worker held": held_ms}
    result.facts = {
        "job_seconds": delay,
        "callback_held_ms": asdict(held),
        "sync_held_ms_measured": asdict(Summary.of(sync_ms)),
        "sync_held_ms_at_20s": asdict(sync),
        "callback_completion_ms": asdict(Summary.of(completion)),
    }
    return result
