"""Measure dispatches per second beside a bare aiohttp client posting the same bodies.

The dispatcher runs alone (`lone_dispatcher` in bench/run.py): on its own topics, before
the rest of the system starts, with no expirer or notifier consuming the TaskDispatched
events it writes, so the figure is the dispatcher's own throughput; the end-to-end phase
measures the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import httpx
from webhook_tasks_cli.stack import replica_name
from webhook_tasks_contracts import build_webhook_request, utc_now
from webhook_tasks_dispatcher.client import OutboundRequest, WebhookClient, create_transport
from webhook_tasks_dispatcher.guard import Allowlist, UrlGuard
from webhook_tasks_dispatcher.handlers import request_group

from .load import LoadResult, Tick, closed_loop
from .stats import PhaseResult, Row, ratio_range
from .system import (
    DEPLOYED_PARTITIONS,
    SERVICE_ENV,
    Context,
    Deployment,
    encode_task,
    fetch,
    group_members,
    producer,
    task_event,
    wait_until,
)

_PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'initiated') AS initiated,
       count(*) FILTER (WHERE status NOT IN ('pending', 'initiated')) AS other
FROM dispatcher.tasks WHERE task_id LIKE $1
"""
_SPAN = """
SELECT count(*) AS tasks, min(created_at) AS first_claimed, max(dispatched_at) AS last_dispatched
FROM dispatcher.tasks WHERE task_id LIKE $1 AND status = 'initiated'
"""
_STATUSES = """
SELECT a.status_code, count(*) AS attempts
FROM dispatcher.dispatch_attempts AS a JOIN dispatcher.tasks AS t USING (correlation_id)
WHERE t.task_id LIKE $1 GROUP BY a.status_code
"""

ALONE = "dispatcher (alone)"
"""The lone dispatcher's name in the CPU meter."""

ANSWERED_IN_PROCESS = "dispatcher (requests answered in process)"
"""The CPU meter's name of the dispatcher whose requests never reach a socket."""

DEPLOYED_REPLICAS = 2
"""How many dispatchers deploy/kubernetes/dispatcher.yaml runs."""


async def _publish_tasks(ctx: Context, deployment: Deployment, prefix: str, count: int) -> None:
    url = f"{ctx.sink.url}/ack"
    kafka = producer(ctx.bootstrap, idempotence=ctx.idempotence)
    await kafka.start()
    try:
        # Pipelined: the whole backlog is on the broker long before the dispatcher is through.
        sent = [
            await kafka.send(
                deployment.topics.task_requested,
                encode_task(task_event(f"{prefix}{index}", url)),
                key=f"{prefix}{index}".encode(),
            )
            for index in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await kafka.stop()


async def _progress(deployment: Deployment, prefix: str) -> tuple[int, int]:
    """Return how many tasks whose id starts with `prefix` are initiated, and how many ended."""
    try:
        rows = await fetch(deployment.database_url, _PROGRESS, f"{prefix}%")
    except asyncpg.UndefinedTableError:
        return 0, 0  # the dispatcher has not created its tables yet
    return int(rows[0]["initiated"]), int(rows[0]["other"])


async def _wait_dispatched(
    ctx: Context,
    deployment: Deployment,
    prefix: str,
    count: int,
    *,
    within: float,
    description: str,
) -> int:
    tick = ctx.report(description, count)
    seen = 0

    async def probe() -> int:
        nonlocal seen
        initiated, other = await _progress(deployment, prefix)
        done = initiated + other
        tick(done - seen)
        seen = done
        return done

    return await wait_until(probe, lambda done: done >= count, within=within)


async def _through_webhook_client(
    targets: Sequence[tuple[str, bytes]],
    *,
    aiohttp_transport: bool,
    concurrency: int,
    max_requests: int,
    duration: float,
    tick: Tick,
) -> LoadResult:
    """Post `targets` through the dispatcher's own client, closed loop, in this process."""
    # As the lone dispatcher has it: the same guard and allow-list, per-host slots, 30 s limit.
    guard = UrlGuard(
        allow=Allowlist.parse(SERVICE_ENV["OUTBOUND_ALLOWLIST"].split(",")), require_https=False
    )
    transport = (
        create_transport(
            guard=guard, max_connections=concurrency, max_connections_per_host=concurrency
        )
        if aiohttp_transport
        else httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        )
    )
    client = WebhookClient(transport, guard=guard, max_requests_per_host=concurrency)

    async def post(url: str, body: bytes, result: LoadResult) -> None:
        result.sent += 1
        started = time.perf_counter()
        outbound = OutboundRequest(url, body, webhook_id=f"msg_bench{result.sent}")
        delivery = await client.send(outbound, now=utc_now())
        status = str(delivery.status_code or delivery.outcome)
        result.record(status, started, delivery.outcome == "accepted")

    try:
        return await closed_loop(
            targets,
            concurrency=concurrency,
            duration=duration,
            max_requests=max_requests,
            tick=tick,
            post=post,
        )
    finally:
        await transport.aclose()


async def _posted_bare(ctx: Context, targets: Sequence[tuple[str, bytes]], what: str) -> LoadResult:
    """Post the bodies a backlog sent (callback URLs included) with the bare aiohttp client."""
    return await closed_loop(
        targets,
        concurrency=ctx.plan.dispatch_concurrency,
        duration=60.0,
        max_requests=len(targets),
        tick=ctx.report(f"dispatcher: bare aiohttp client, {what}", len(targets)),
    )


async def warm_up(ctx: Context, deployment: Deployment) -> None:
    """Dispatch one task through `deployment`, so its dispatcher has joined its consumer group."""
    # No progress bar: this runs while another phase may be showing its own. A prefix of its
    # own: the deployments share one database, and an earlier warm-up's task would answer.
    prefix = f"bench-{ctx.run_id}-dwarm-{uuid.uuid4().hex[:6]}-"
    await _publish_tasks(ctx, deployment, prefix, 1)
    initiated, other = await wait_until(
        lambda: _progress(deployment, prefix), lambda done: sum(done) >= 1, within=90
    )
    if initiated < 1:
        # A refused loopback URL (the SSRF guard's allow-list) fails the task rather than hangs.
        raise RuntimeError(
            "the lone dispatcher's warm-up task was "
            + ("not dispatched within 90 s" if other == 0 else "not accepted")
            + "; see the service logs"
        )


async def _bodies_sent(
    ctx: Context, deployment: Deployment, prefix: str
) -> list[tuple[str, bytes]]:
    """Return the bodies the dispatcher sent for tasks `prefix`*, callback URLs included."""
    tasks = await fetch(
        deployment.database_url,
        "SELECT correlation_id, task_id FROM dispatcher.tasks WHERE task_id LIKE $1",
        f"{prefix}%",
    )
    targets = [
        (
            f"{ctx.sink.url}/ack",
            json.dumps(
                build_webhook_request(
                    correlation_id=row["correlation_id"],
                    callback_url=deployment.tokens.callback_url(
                        deployment.gateway_url, row["correlation_id"]
                    ),
                    prompt="a benchmark task",
                    task_id=row["task_id"],
                    user_id="bench-user",
                    project_id="bench-project",
                    params={},
                )
            ).encode(),
        )
        for row in tasks
    ]
    return targets or [(f"{ctx.sink.url}/ack", b"{}")]


@dataclass
class _Round:
    """One round: the dispatcher's backlog, then the same bodies posted by the bare client."""

    backlog: _Backlog
    cpu_ms: float
    """The dispatcher's CPU milliseconds per task of the backlog."""
    bare: LoadResult
    client: LoadResult
    """The dispatcher's WebhookClient alone, over the aiohttp transport it uses."""


async def run(ctx: Context, deployment: Deployment) -> PhaseResult:
    """Take turns: a backlog through the dispatcher, then its bodies posted bare, in rounds.

    `deployment` runs the dispatcher alone; its process is metered as `ALONE`.
    """
    plan = ctx.plan
    rounds: list[_Round] = []
    # In rounds, taking turns: the machine is shared and its load drifts over seconds, so a
    # backlog and its ceiling measured once each, a minute apart, could meet different loads.
    for number in range(1, plan.dispatch_rounds + 1):
        prefix = f"bench-{ctx.run_id}-d{number}-"
        what = f"round {number}/{plan.dispatch_rounds}"
        backlog = await _dispatch_backlog(ctx, deployment, prefix, f"dispatcher, {what}")
        cpu_ms = ctx.meter.cpu_ms(ALONE, backlog.cpu_before, backlog.finished)
        targets = await _bodies_sent(ctx, deployment, prefix)
        bare = await _posted_bare(ctx, targets, what)
        # What the HTTP exchange alone costs through the dispatcher's client (guard, headers,
        # capped read) over the transport it uses, beside the same ceiling.
        client = await _through_webhook_client(
            targets,
            aiohttp_transport=True,
            concurrency=plan.dispatch_concurrency,
            max_requests=len(targets),
            duration=60.0,
            tick=ctx.report(f"dispatcher's HTTP client, aiohttp transport, {what}", len(targets)),
        )
        rounds.append(_Round(backlog, cpu_ms, bare, client))
    # Once, after the rounds: httpx's own transport, the one the client does not use, serves
    # a few hundred requests/s at 32 at once (httpx#3215), and a while is enough to measure it.
    with_httpx = await _through_webhook_client(
        targets,
        aiohttp_transport=False,
        concurrency=plan.dispatch_concurrency,
        max_requests=len(targets),
        duration=15.0,
        tick=ctx.report("dispatcher's HTTP client, httpx transport", len(targets)),
    )
    bare = LoadResult.combined([one.bare for one in rounds])
    clients = {
        "aiohttp": LoadResult.combined([one.client for one in rounds]),
        "httpx": with_httpx,
    }
    dispatched = sum(one.backlog.dispatched for one in rounds)
    seconds = sum(one.backlog.seconds for one in rounds)
    rate = dispatched / seconds if seconds > 0 else 0.0
    ratios = [one.backlog.rate / one.bare.ok_per_second for one in rounds if one.bare.ok_per_second]
    client_ratios = [
        one.client.ok_per_second / one.bare.ok_per_second
        for one in rounds
        if one.bare.ok_per_second
    ]
    tasks = plan.dispatch_tasks * plan.dispatch_rounds
    result = PhaseResult()
    result.rows = [
        Row(
            "Dispatcher",
            "dispatches/s",
            rate,
            bare.ok_per_second,
            "/s",
            "higher",
            "bare aiohttp client",
            f"{dispatched}/{tasks} tasks from a Kafka backlog in {plan.dispatch_rounds} "
            f"rounds of {plan.dispatch_tasks}, each followed by the bare client (ratio per "
            f"round {ratio_range(ratios)}), the dispatcher alone (its TaskDispatched events go "
            "to a topic nobody consumes): consumed, claimed, POSTed, acknowledged, committed "
            "(first claim to last commit); bare client: same bodies, same endpoint, "
            f"{plan.dispatch_concurrency} at once",
        ),
        *(
            Row(
                "Dispatcher",
                f"its HTTP client alone, {transport} transport, requests/s",
                load.ok_per_second,
                bare.ok_per_second,
                "/s",
                "higher",
                "bare aiohttp client",
                "the dispatcher's WebhookClient (SSRF guard, headers, capped read) posting "
                f"the same bodies through httpx's transport API over {transport}'s "
                + (
                    f"transport (the one it uses), in each round after the bare client (ratio "
                    f"per round {ratio_range(client_ratios)})"
                    if transport == "aiohttp"
                    else "own transport, once after the rounds"
                )
                + f", {plan.dispatch_concurrency} at once, in the benchmark's process as the "
                "bare client; no Kafka, no database",
            )
            for transport, load in clients.items()
        ),
    ]
    result.facts = {
        "tasks": tasks,
        "finished": sum(one.backlog.finished for one in rounds),
        "cpu_ms_per_unit": "dispatcher (alone) CPU "
        f"{sum(one.cpu_ms for one in rounds) / len(rounds):.1f} ms per task (rounds: "
        + ", ".join(f"{one.cpu_ms:.2f}" for one in rounds)
        + ")",
        "initiated": dispatched,
        "seconds": round(seconds, 3),
        "bare": {"ok": bare.ok, "failed": bare.failed, "elapsed_s": round(bare.elapsed, 3)},
        "http_client": {
            transport: {
                "ok": load.ok,
                "statuses": load.statuses,
                "elapsed_s": round(load.elapsed, 3),
            }
            for transport, load in clients.items()
        },
        "rounds": [
            {
                "dispatches_per_s": round(one.backlog.rate),
                "bare_per_s": round(one.bare.ok_per_second),
                "http_client_per_s": round(one.client.ok_per_second),
            }
            for one in rounds
        ],
    }
    return result


@dataclass(frozen=True)
class _Backlog:
    """How a backlog of tasks went through the dispatcher."""

    cpu_before: dict[str, float]
    finished: int
    dispatched: int
    seconds: float

    @property
    def rate(self) -> float:
        """Return tasks dispatched per second, first claim to last commit."""
        return self.dispatched / self.seconds if self.seconds > 0 else 0.0


async def _dispatch_backlog(
    ctx: Context, deployment: Deployment, prefix: str, description: str
) -> _Backlog:
    """Publish `plan.dispatch_tasks` tasks at once and wait until every one is dispatched."""
    tasks = ctx.plan.dispatch_tasks
    cpu_before = ctx.meter.read()
    await _publish_tasks(ctx, deployment, prefix, tasks)
    finished = await _wait_dispatched(
        ctx,
        deployment,
        prefix,
        tasks,
        within=30 + tasks / 20,
        description=f"{description}: {tasks} tasks",
    )
    span = (await fetch(deployment.database_url, _SPAN, f"{prefix}%"))[0]
    dispatched = int(span["tasks"])
    seconds = (
        (span["last_dispatched"] - span["first_claimed"]).total_seconds() if dispatched else 0.0
    )
    return _Backlog(cpu_before, finished, dispatched, seconds)


async def add_replicas(ctx: Context, deployment: Deployment) -> None:
    """Start the lone dispatcher's other replicas; return once they share its task requests."""
    for replica, meter_name in enumerate(replica_names()[1:], start=2):
        deployment.start_replica("dispatcher", replica)
        ctx.meter.watch(meter_name, deployment.stack.pid(replica_name("dispatcher", replica)))
    group = request_group(deployment.topics)
    members = await wait_until(
        lambda: group_members(ctx.bootstrap, group),
        lambda members: members == DEPLOYED_REPLICAS,
        within=90,
        interval=0.5,
    )
    if members != DEPLOYED_REPLICAS:
        raise RuntimeError(
            f"the {DEPLOYED_REPLICAS} dispatcher replicas did not form one stable consumer "
            f"group within 90 s ({members} stable members); see the service logs"
        )
    await warm_up(ctx, deployment)


async def run_replicas(ctx: Context, deployment: Deployment, bare_per_second: float) -> PhaseResult:
    """Let the deployed number of dispatchers work through a backlog together.

    `bare_per_second` is the bare client's figure from `run`, in the same run.
    """
    prefix = f"bench-{ctx.run_id}-dr-"
    backlog = await _dispatch_backlog(
        ctx, deployment, prefix, f"{DEPLOYED_REPLICAS} dispatcher replicas"
    )
    cpu_ms = sum(
        ctx.meter.cpu_ms(name, backlog.cpu_before, backlog.finished) for name in replica_names()
    )
    result = PhaseResult()
    result.rows = [
        Row(
            "Dispatcher",
            f"dispatches/s, {DEPLOYED_REPLICAS} replicas as deployed",
            backlog.rate,
            bare_per_second,
            "/s",
            "higher",
            "bare aiohttp client",
            f"{backlog.dispatched}/{ctx.plan.dispatch_tasks} tasks from a Kafka backlog of "
            f"{DEPLOYED_PARTITIONS} partitions, {DEPLOYED_REPLICAS} dispatcher processes in one "
            "consumer group (deploy/kubernetes/dispatcher.yaml's replicas) and nothing else; "
            "the bare client's figure is the one above, one process",
        )
    ]
    result.facts = {
        "replicas": DEPLOYED_REPLICAS,
        "tasks": ctx.plan.dispatch_tasks,
        "finished": backlog.finished,
        "initiated": backlog.dispatched,
        "seconds": round(backlog.seconds, 3),
        "cpu_ms_per_unit": f"dispatchers together CPU {cpu_ms:.1f} ms per task",
    }
    return result


async def run_answered_in_process(ctx: Context, deployment: Deployment) -> PhaseResult:
    """Take turns, in rounds: a backlog through `deployment`'s dispatcher, then the bare client.

    That dispatcher answers its requests in its own process (`python -m bench.servers
    dispatcher-answered-in-process`); it is metered as `ANSWERED_IN_PROCESS`.
    """
    plan = ctx.plan
    backlogs: list[_Backlog] = []
    bares: list[LoadResult] = []
    cpu_ms: list[float] = []
    for number in range(1, plan.dispatch_rounds + 1):
        prefix = f"bench-{ctx.run_id}-da{number}-"
        what = f"answered in process, round {number}/{plan.dispatch_rounds}"
        backlog = await _dispatch_backlog(ctx, deployment, prefix, f"dispatcher {what}")
        cpu_ms.append(ctx.meter.cpu_ms(ANSWERED_IN_PROCESS, backlog.cpu_before, backlog.finished))
        bares.append(await _posted_bare(ctx, await _bodies_sent(ctx, deployment, prefix), what))
        backlogs.append(backlog)
    bare = LoadResult.combined(bares)
    dispatched = sum(backlog.dispatched for backlog in backlogs)
    seconds = sum(backlog.seconds for backlog in backlogs)
    ratios = [
        backlog.rate / load.ok_per_second
        for backlog, load in zip(backlogs, bares, strict=True)
        if load.ok_per_second
    ]
    # 202, the in-process answer; the external service would have answered 200.
    answers = await fetch(deployment.database_url, _STATUSES, f"bench-{ctx.run_id}-da%")
    result = PhaseResult()
    result.rows = [
        Row(
            "Dispatcher",
            "dispatches/s, requests answered in process",
            dispatched / seconds if seconds > 0 else 0.0,
            bare.ok_per_second,
            "/s",
            "higher",
            "bare aiohttp client",
            f"as the row above, {plan.dispatch_rounds} rounds of {plan.dispatch_tasks} tasks "
            f"(ratio per round {ratio_range(ratios)}), but every request answered in the "
            "dispatcher's own process (httpx's MockTransport: 202 and an acknowledgement; "
            "its SSRF guard, headers and reading of the answer still run): what it costs "
            "besides the exchange over a socket, the most any transport could give it",
        )
    ]
    result.facts = {
        "tasks": plan.dispatch_tasks * plan.dispatch_rounds,
        "finished": sum(backlog.finished for backlog in backlogs),
        "initiated": dispatched,
        "seconds": round(seconds, 3),
        "cpu_ms_per_unit": f"dispatcher CPU {sum(cpu_ms) / len(cpu_ms):.2f} ms per task (rounds: "
        + ", ".join(f"{one:.2f}" for one in cpu_ms)
        + ")",
        "statuses": {str(row["status_code"]): row["attempts"] for row in answers},
        "rounds": [
            {"dispatches_per_s": round(backlog.rate), "bare_per_s": round(load.ok_per_second)}
            for backlog, load in zip(backlogs, bares, strict=True)
        ],
    }
    return result


def replica_names() -> list[str]:
    """Return the CPU meter's names of the lone dispatcher's processes, the first as `ALONE`."""
    return [ALONE, *(f"dispatcher (replica {n})" for n in range(2, DEPLOYED_REPLICAS + 1))]
