"""Run every phase against embedded PostgreSQL and Kafka, then print and save the results."""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from webhook_tasks_cli.stack import SERVICES
from webhook_tasks_runtime.infra import Infrastructure, start_embedded

from . import dispatcher, efficiency, endtoend, expirer, gateway
from .plan import FULL, QUICK, Plan, Tick
from .report import print_results, write_chart, write_json
from .stats import PhaseResult
from .system import (
    REPO_ROOT,
    SERVICE_ENV,
    Context,
    CpuMeter,
    Deployment,
    ServerProcess,
    cpu_count,
    create_topics,
)

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


class ProgressReporter:
    """One progress bar per phase step, on a rich Progress display."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._current: TaskID | None = None

    def __call__(self, description: str, total: int) -> Tick:
        """Start a bar (indeterminate when `total` is 0) and return its advance function."""
        self.finish()
        task = self._progress.add_task(description, total=total or None)
        self._current = task
        return lambda amount: self._progress.advance(task, amount)

    def finish(self) -> None:
        """Mark the current bar complete."""
        if self._current is not None:
            task = self._progress.tasks[self._current]
            self._progress.update(
                self._current, total=task.completed or 1, completed=task.completed or 1
            )
            self._current = None


@contextmanager
def _started(*stoppables: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for item in reversed(stoppables):
            item.stop()


async def _phases(
    ctx: Context, log_dir: Path, console: Console, env: dict[str, str]
) -> dict[str, PhaseResult]:
    infra = ctx.infra
    results: dict[str, PhaseResult] = {}
    # The gateway and the dispatcher are each measured alone, on topics of their own and
    # stopped before the next deployment starts, so no other service competes with them for
    # the CPUs, the broker or the database; the expirer, the end-to-end flow and the
    # efficiency phase run in the whole system, started after them.
    lone_gateway = Deployment.create(infra, "gateway", log_dir, env)
    lone_dispatcher = Deployment.create(infra, "dispatcher", log_dir, env)
    answered = Deployment.create(infra, "dispatcher-answered", log_dir, env)
    system = Deployment.create(infra, "system", log_dir, env)
    await create_topics(ctx.bootstrap, [lone_gateway, system])
    # Partitioned as deployed: the dispatcher is measured as one process, then as its replicas.
    await create_topics(ctx.bootstrap, [lone_dispatcher, answered], as_deployed=True)
    noop = ServerProcess("noop", log_dir)
    in_memory = ServerProcess("gateway-in-memory", log_dir, env=lone_gateway.stack.environment())
    meter = ctx.meter
    with _started(noop, in_memory, lone_gateway, lone_dispatcher, answered, system):
        # One deployment at a time: idle consumers poll the broker many times a second, and
        # that slowed its answers to the gateway (p99 at the fixed rate up to 8 times worse).
        lone_gateway.start(["callback-gateway"])
        noop.wait_ready()
        in_memory.wait_ready()
        ctx.sink.wait_ready()
        lone_gateway.stack.wait_for_gateway(timeout=90)
        meter.watch("no-op server", noop.pid)
        meter.watch(gateway.IN_MEMORY, in_memory.pid)
        meter.watch("external service", ctx.sink.pid)
        meter.watch("gateway (alone)", lone_gateway.stack.pid("callback-gateway"))
        console.log("the gateway and the no-op server are up")
        results["gateway"] = await _metered(meter, gateway.run(ctx, lone_gateway, noop, in_memory))
        lone_gateway.stop()
        noop.stop()
        in_memory.stop()

        lone_dispatcher.start(["dispatcher"])
        meter.watch(dispatcher.ALONE, lone_dispatcher.stack.pid("dispatcher"))
        await dispatcher.warm_up(ctx, lone_dispatcher)
        waited = await meter.settle([dispatcher.ALONE], within=ctx.plan.settle_seconds)
        console.log("the lone dispatcher is warm")
        results["dispatcher"] = await _metered(meter, dispatcher.run(ctx, lone_dispatcher))
        results["dispatcher"].facts["waited_for_idle_s"] = round(waited, 1)
        await dispatcher.add_replicas(ctx, lone_dispatcher)
        waited = await meter.settle(dispatcher.replica_names(), within=ctx.plan.settle_seconds)
        console.log(f"{dispatcher.DEPLOYED_REPLICAS} dispatcher replicas share the task requests")
        bare_per_second = results["dispatcher"].rows[0].ceiling
        replicas = dispatcher.run_replicas(ctx, lone_dispatcher, bare_per_second)
        results["dispatcher replicas"] = await _metered(meter, replicas)
        results["dispatcher replicas"].facts["waited_for_idle_s"] = round(waited, 1)
        lone_dispatcher.stop()

        # Started once the lone dispatcher has stopped, so the two do not share the CPUs.
        answering = ServerProcess(
            "dispatcher-answered-in-process", log_dir, env=answered.stack.environment()
        )
        with _started(answering):
            meter.watch(dispatcher.ANSWERED_IN_PROCESS, answering.pid)
            await dispatcher.warm_up(ctx, answered)
            waited = await meter.settle(
                [dispatcher.ANSWERED_IN_PROCESS], within=ctx.plan.settle_seconds
            )
            console.log("the dispatcher whose requests are answered in process is warm")
            bound = await _metered(meter, dispatcher.run_answered_in_process(ctx, answered))
            bound.facts["waited_for_idle_s"] = round(waited, 1)
            results["dispatcher answered in process"] = bound

        system.start(SERVICES)
        system.stack.wait_for_gateway(timeout=90)
        for service in SERVICES:
            meter.watch(service, system.stack.pid(service))
        console.log("the system is up; its workers are joining their consumer groups")
        await endtoend.wait_warm(ctx, asyncio.create_task(endtoend.warm_up(ctx, system)))
        console.log("the system is warm")
        # Not a service: the floor under the end-to-end latencies.
        hops = await endtoend.kafka_hops(ctx, system)
        phases: list[tuple[str, Callable[[], Awaitable[PhaseResult]]]] = [
            ("expirer", lambda: expirer.run(ctx, system)),
            (
                "end to end",
                lambda: endtoend.run(
                    ctx, system, hops, dispatch_rate=results["dispatcher"].rows[0].figure
                ),
            ),
            ("efficiency", lambda: efficiency.run(ctx, system)),
        ]
        for name, phase in phases:
            waited = await meter.settle(SERVICES, within=ctx.plan.settle_seconds)
            results[name] = await _metered(meter, phase())
            results[name].facts["waited_for_idle_s"] = round(waited, 1)
            console.log(f"{name} measured")
    return results


async def _metered(meter: CpuMeter, phase: Awaitable[PhaseResult]) -> PhaseResult:
    # Which process was busy tells whether a figure is bound by CPU, and by whose.
    before, started = meter.read(), time.monotonic()
    result = await phase
    after = meter.read()
    result.facts["cpu_percent_of_one_core"] = meter.percent(
        before, after, time.monotonic() - started
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service, to measure its effect (repeatable)",
    )
    args = parser.parse_args(argv)
    plan: Plan = QUICK if args.quick else FULL
    env = dict(item.partition("=")[::2] for item in args.env)
    if any(not name for name in env):
        parser.error("--env expects NAME=VALUE")
    # Piped output (CI, a file) gets the width the table needs instead of 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=130)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out
    log_dir = out / f"logs-{stamp}-{plan.name}"
    log_dir.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()

    console.log(f"{plan.name} run; starting embedded PostgreSQL and Kafka")
    infra: Infrastructure = start_embedded()
    sink = ServerProcess("sink", log_dir)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    reporter = ProgressReporter(progress)
    fetch_wait = int(env.get("KAFKA_FETCH_MAX_WAIT_MS") or infra.fetch_max_wait_ms)
    ctx = Context(infra, plan, reporter, sink, uuid.uuid4().hex[:8], CpuMeter(), fetch_wait)
    try:
        with _started(sink), progress:
            results = asyncio.run(_phases(ctx, log_dir, console, env))
            reporter.finish()
    finally:
        infra.close()

    seconds = time.monotonic() - clock
    rows = [row for result in results.values() for row in result.rows]
    title = (
        f"webhook-tasks benchmark ({plan.name}, {cpu_count()} CPUs, {seconds:.0f} s, "
        f"{started_at:%Y-%m-%d %H:%M} UTC)"
    )
    if env:
        title += " with " + ", ".join(f"{name}={value}" for name, value in env.items())
    print_results(console, rows, title=title)
    for name, result in results.items():
        busy = sorted(
            result.facts.get("cpu_percent_of_one_core", {}).items(), key=lambda item: -item[1]
        )
        shown = (
            ", ".join(f"{process} {percent:.0f}%" for process, percent in busy if percent >= 5)
            or "every process under 5%"
        )
        per_unit = result.facts.get("cpu_ms_per_unit")
        if per_unit:
            shown += f"; {per_unit}"
        console.print(f"[dim]CPU during {name} (% of one core): {shown}[/]")
    json_path = out / f"bench-{stamp}-{plan.name}.json"
    chart_path = json_path.with_suffix(".png")
    write_json(
        json_path,
        {
            "mode": plan.name,
            "started_at": started_at.isoformat(),
            "seconds": round(seconds, 1),
            "machine": {
                "cpus": cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "infrastructure": "embedded PostgreSQL and Tansu (memory storage)",
            "service_env": {**SERVICE_ENV, **env},
            "plan": plan.__dict__,
            "rows": [row.as_json() for row in rows],
            "facts": {name: result.facts for name, result in results.items()},
        },
    )
    write_chart(
        chart_path,
        {
            "Gateway: callback latency at a fixed offered load": results["gateway"].samples_ms,
            "End to end: latencies and bare Kafka hops": results["end to end"].samples_ms,
            "Expirer: lateness after the deadline": results["expirer"].samples_ms,
        },
    )
    console.print(f"results: {json_path}\nchart:   {chart_path}\nservice logs: {log_dir}")
    return 0
