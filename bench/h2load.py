"""Offer a fixed request rate with h2load (nghttp2), a native load generator, when it is installed.

The in-repo Python client cannot hold 2,000 requests/s on a small machine beside the
servers it loads; h2load can. Over HTTP/1.1 (`--h1`), each of many keep-alive
connections sends at a fixed rate (`--rps`), the connections starting one after the
other so their sends interleave, and `--log-file` records every request (start time,
status, duration), from which the percentiles are computed here.

HTTP/1.1 carries one request at a time on a connection: a request whose time comes
while its connection still waits for an answer leaves when the answer arrives, and
h2load counts its latency from then (coordinated omission). With each connection
sending once every CONNECTION_INTERVAL_S, only an answer slower than that interval can
delay a send; the result counts those answers and gives the latencies corrected as
HdrHistogram does (an answer taking d held back sends that waited d - T, d - 2T, ...).
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .generators import run_generator
from .load import LoadResult, Tick
from .stats import Summary

CONNECTION_INTERVAL_S = 0.064
"""Each connection sends once per this interval: only an answer slower than it delays a send."""
MAX_CONNECTIONS = 128
_SUMMARY = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done", re.MULTILINE)
FAILED_STREAM = "h2load stream failed"
UNANSWERED = "h2load no answer"
NOT_SENT = "h2load not sent"


class H2loadError(RuntimeError):
    """h2load did not run to the end, or printed no summary."""


@dataclass(frozen=True)
class Schedule:
    """How h2load spreads a fixed rate over connections."""

    connections: int
    per_connection_rate: float
    requests: int
    connect_every_ms: int
    """One connection starts every this many ms: their sends interleave instead of bunching."""

    @property
    def interval_ms(self) -> float:
        """Return the time between two planned sends on one connection."""
        return 1000 / self.per_connection_rate


def schedule(rate: float, duration: float) -> Schedule:
    """Spread `rate` requests/s for `duration` s over connections sending every ~64 ms each."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    connections = min(MAX_CONNECTIONS, max(1, round(rate * CONNECTION_INTERVAL_S)))
    requests = max(connections, round(rate * duration))
    # h2load starts connections at whole milliseconds: one every 1/rate (at least 1 ms)
    # spreads their first sends, and so all later ones, over one interval or two.
    return Schedule(connections, rate / connections, requests, max(1, round(1000 / rate)))


def find_h2load() -> str | None:
    """Return the path of the h2load executable, or None when it is not installed."""
    return shutil.which("h2load")


def version(executable: str) -> str:
    """Return h2load's version line, e.g. "h2load nghttp2/1.52.0"."""
    completed = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    return lines[0] if lines else "h2load"


async def fixed_rate(
    executable: str,
    url: str,
    body: bytes,
    *,
    rate: float,
    duration: float,
    tick: Tick = lambda _n: None,
) -> LoadResult:
    """POST `body` to `url` at `rate` per second for about `duration` seconds, open loop."""
    plan = schedule(rate, duration)
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as folder:
        body_file = Path(folder) / "body.json"
        body_file.write_bytes(body)
        log_file = Path(folder) / "requests.tsv"
        command = [
            executable,
            "--h1",
            "--clients",
            str(plan.connections),
            "--requests",
            str(plan.requests),
            "--rps",
            f"{plan.per_connection_rate:.6f}",
            "--rate",
            "1",
            "--rate-period",
            f"{plan.connect_every_ms}ms",
            "--connection-inactivity-timeout",
            "10s",
            "--data",
            str(body_file),
            "--header",
            "content-type: application/json",
            "--log-file",
            str(log_file),
            url,
        ]
        async with asyncio.timeout(duration + 60):
            returncode, stdout, stderr = await run_generator(command)
        if returncode != 0:
            raise H2loadError(
                f"h2load exited with {returncode}: {(stdout + stderr).decode()[-500:]}"
            )
        total, started = parse_summary(stdout.decode())
        result = parse_log(
            log_file.read_text(),
            interval_ms=plan.interval_ms,
            total=total,
            started=started,
            ramp_ms=plan.connections * plan.connect_every_ms,
        )
    result.details = {
        "schedule": {**asdict(plan), "interval_ms": round(plan.interval_ms, 2)},
        "planned_per_second": rate,
        **result.details,
    }
    tick(result.ok)
    return result


def parse_summary(output: str) -> tuple[int, int]:
    """Return the requests planned and started, from h2load's summary."""
    found = _SUMMARY.search(output)
    if found is None:
        raise H2loadError(f"h2load printed no summary: {output[-500:]}")
    return int(found[1]), int(found[2])


def parse_log(
    text: str, *, interval_ms: float, total: int, started: int, ramp_ms: float = 0.0
) -> LoadResult:
    """Read h2load's per-request log (start µs since the epoch, status, µs to the answer).

    `interval_ms` is the time between two planned sends on one connection; `total` and
    `started` are the requests h2load planned and sent, from its summary; `ramp_ms` is how
    long the connections take to start (and so to finish), when fewer of them send.
    """
    rows: list[tuple[int, int, int]] = []
    for line in text.splitlines():
        if line.strip():
            start, status, micros = line.split("\t")[:3]
            rows.append((int(start), int(status), int(micros)))
    rows.sort()
    statuses: Counter[str] = Counter(
        FAILED_STREAM if status < 0 else str(status) for _, status, _ in rows
    )
    # A request h2load sent but never logged had no answer before its connection timed out.
    if started > len(rows):
        statuses[UNANSWERED] = started - len(rows)
    if total > started:
        statuses[NOT_SENT] = total - started
    latencies = [micros / 1000 for _, status, micros in rows if 200 <= status < 300]
    ok = len(latencies)
    result = LoadResult(
        sent=max(started, len(rows)),
        ok=ok,
        failed=sum(statuses.values()) - ok,
        statuses=dict(statuses),
        latencies_ms=latencies,
    )
    if not rows:
        return result
    first = rows[0][0]
    result.elapsed = (max(start + micros for start, _, micros in rows) - first) / 1e6
    last = rows[-1][0]
    # The steady part: every connection sending, none finished yet.
    steady_from, steady_to = first + ramp_ms * 1000, last - ramp_ms * 1000
    steady = [start for start, _, _ in rows if steady_from <= start < steady_to]
    steady_s = (steady_to - steady_from) / 1e6
    per_second = Counter(int(start - steady_from) // 1_000_000 for start in steady)
    whole = [per_second[second] for second in range(math.floor(steady_s))]
    slower = [latency for latency in latencies if latency > interval_ms]
    result.details = {
        "achieved_per_second": _rate(len(rows) - 1, (last - first) / 1e6),
        "achieved_per_second_steady": _rate(len(steady), steady_s),
        "sends_per_whole_second_steady": {"min": min(whole), "max": max(whole)} if whole else None,
        "answers_slower_than_interval": len(slower),
        "latency_corrected_for_coordinated_omission_ms": asdict(
            Summary.of(corrected_latencies(latencies, interval_ms))
        ),
    }
    return result


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def omitted_latencies(latencies_ms: list[float], interval_ms: float) -> list[float]:
    """Return how long the sends held back by slow answers waited (HdrHistogram's estimate).

    An answer taking d holds back the sends planned on its connection during it: the one
    planned T later waits about d - T, the next d - 2T, and so on while positive.
    """
    omitted = []
    for latency in latencies_ms:
        missing = latency - interval_ms
        while missing > 0:
            omitted.append(missing)
            missing -= interval_ms
    return omitted


def corrected_latencies(latencies_ms: list[float], interval_ms: float) -> list[float]:
    """Return the latencies with each held-back send's wait counted from its planned time.

    h2load logs a held-back send from when it left, so its latency is in the log already,
    too short; which one it is, the log does not say. Its estimated wait replaces one of the
    shortest latencies instead: the count stays that of the requests, and the correction
    errs towards more latency, never less.
    """
    omitted = omitted_latencies(latencies_ms, interval_ms)
    return sorted(latencies_ms)[len(omitted) :] + omitted
