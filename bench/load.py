"""Generate HTTP load with asyncio and aiohttp, bounded in request count and in time."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .stats import Summary

Tick = Callable[[int], None]


@dataclass
class LoadResult:
    """What a load run saw: answers by status, latencies of the successful ones."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    send_lag_ms: list[float] = field(default_factory=list)
    """At a fixed rate: how late each request left after its planned time (generator lag)."""
    reported_latency: Summary | None = None
    """The generator's own latency summary, where it gives no samples (wrk)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the generator tells about the run besides counts and latencies (h2load)."""

    @classmethod
    def combined(cls, runs: Sequence[LoadResult]) -> LoadResult:
        """Return one result for runs of the same load one after another: counts add up.

        Where a generator gave only summaries (wrk), each percentile is the highest of the
        runs': an upper bound, as percentiles of separate runs do not combine exactly.
        """
        total = cls()
        summaries = [run.reported_latency for run in runs if run.reported_latency is not None]
        for run in runs:
            total.sent += run.sent
            total.ok += run.ok
            total.failed += run.failed
            total.elapsed += run.elapsed
            total.latencies_ms.extend(run.latencies_ms)
            total.send_lag_ms.extend(run.send_lag_ms)
            for status, count in run.statuses.items():
                total.statuses[status] = total.statuses.get(status, 0) + count
        if summaries:
            total.reported_latency = Summary(
                count=sum(summary.count for summary in summaries),
                p50=max(summary.p50 for summary in summaries),
                p90=max(summary.p90 for summary in summaries),
                p99=max(summary.p99 for summary in summaries),
                max=max(summary.max for summary in summaries),
            )
        return total

    def latency(self) -> Summary:
        """Return the latency summary of the successful requests."""
        return self.reported_latency or Summary.of(self.latencies_ms)

    @property
    def ok_per_second(self) -> float:
        """Return successful answers per second of the run."""
        return self.ok / self.elapsed if self.elapsed else 0.0

    def record(self, status: str, started: float, ok: bool) -> None:
        """Count one answer (or error) of a request that began at `started`."""
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.ok += 1
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
        else:
            self.failed += 1


def session(connections: int) -> aiohttp.ClientSession:
    """Return a client session holding up to `connections` keep-alive connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=30),
        trust_env=False,
    )


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    result: LoadResult,
    planned: float | None = None,
) -> None:
    started = time.perf_counter()
    if planned is not None:
        # Latency counts from the planned send time, so a late send (a stalled server holding
        # the generator back) adds to it instead of hiding: no coordinated omission.
        result.send_lag_ms.append((started - planned) * 1000)
        started = planned
    result.sent += 1
    try:
        async with http.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as response:
            await response.read()
            result.record(str(response.status), started, 200 <= response.status < 300)
    except (aiohttp.ClientError, TimeoutError) as error:
        result.record(type(error).__name__, started, False)


Post = Callable[[str, bytes, LoadResult], Awaitable[None]]
"""Send one request (`url`, `body`), counting it as sent and recording its answer in the result."""


async def closed_loop(
    targets: Sequence[tuple[str, bytes]],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    tick: Tick = lambda _n: None,
    post: Post | None = None,
) -> LoadResult:
    """Keep `concurrency` requests in flight until `duration` or `max_requests` is reached.

    `post` sends each request; by default a bare aiohttp session of `concurrency` connections.
    """
    if post is None:
        async with session(concurrency) as http:
            return await closed_loop(
                targets,
                concurrency=concurrency,
                duration=duration,
                max_requests=max_requests,
                tick=tick,
                post=functools.partial(_post, http),
            )
    send = post  # narrowed to a Post for the closure below, where mypy would not narrow `post`
    result = LoadResult()
    cycle = itertools.cycle(targets)
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        while time.perf_counter() < deadline and result.sent < max_requests:
            url, body = next(cycle)
            await send(url, body, result)
            tick(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def fixed_rate(
    targets: Sequence[tuple[str, bytes]],
    *,
    rate: float,
    duration: float,
    connections: int = 256,
    tick: Tick = lambda _n: None,
) -> LoadResult:
    """Start requests at `rate` per second for `duration` seconds, whatever the answers.

    Each latency runs from the request's planned start, not from when it actually left.
    """
    result = LoadResult()
    total = int(rate * duration)
    async with session(connections) as http:
        started = time.perf_counter()
        in_flight: set[asyncio.Task[None]] = set()
        for index, (url, body) in zip(range(total), itertools.cycle(targets), strict=False):
            planned = started + index / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_post(http, url, body, result, planned))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(lambda _task: tick(1))
        # The run is bounded in time too: what has not answered 10 s after the last send fails.
        if in_flight:
            await asyncio.wait(in_flight, timeout=10)
        for task in in_flight:
            task.cancel()
        result.elapsed = time.perf_counter() - started
    return result
