"""Load an HTTP server with wrk, a native closed-loop load generator, when it is installed.

A Python load generator shares the machine's CPUs with the server it loads and
tops out at a few thousand requests per second, below what a raw ASGI app
serves; wrk does not. It posts each target in turn (a Lua script reads them from
a file) and reports counts by status and latency percentiles as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .generators import run_generator
from .load import LoadResult, Tick
from .stats import Summary

SCRIPT = Path(__file__).with_name("wrk_callbacks.lua")
RESULT_PREFIX = "WRK_RESULT "
_SOCKET_ERRORS = ("connect", "read", "write", "timeout")


class WrkError(RuntimeError):
    """wrk did not run to the end, or printed no result."""


def find_wrk() -> str | None:
    """Return the path of the wrk executable, or None when it is not installed."""
    return shutil.which("wrk")


def targets_file(targets: Sequence[tuple[str, bytes]], folder: Path) -> tuple[str, Path]:
    """Write the targets' paths and bodies for the script; return their base URL and the file."""
    lines = []
    bases = set()
    for url, body in targets:
        parts = urlsplit(url)
        bases.add(f"{parts.scheme}://{parts.netloc}")
        text = body.decode()
        # One target a line, path and body split by a tab: neither may hold either.
        if any(c in text for c in "\t\n\r") or any(c in parts.path for c in "\t\n\r"):
            raise ValueError(f"target {parts.path} holds a tab or a line break")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines.append(f"{path}\t{text}\n")
    if len(bases) != 1:
        raise ValueError(f"targets must share one server, got {sorted(bases)}")
    listing = folder / "wrk-targets.tsv"
    listing.write_text("".join(lines))
    return bases.pop(), listing


async def closed_loop(
    executable: str,
    targets: Sequence[tuple[str, bytes]],
    *,
    connections: int,
    duration: float,
    tick: Tick = lambda _n: None,
) -> LoadResult:
    """Keep `connections` requests in flight with wrk (one thread) for `duration` seconds."""
    seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        base_url, listing = targets_file(targets, Path(folder))
        command = [
            executable,
            "--threads",
            "1",
            "--connections",
            str(connections),
            "--duration",
            f"{seconds}s",
            "--timeout",
            "10s",
            "--script",
            str(SCRIPT),
            base_url,
            "--",
            str(listing),
        ]
        async with asyncio.timeout(seconds + 30):
            returncode, stdout, stderr = await run_generator(command)
    if returncode != 0:
        raise WrkError(f"wrk exited with {returncode}: {stderr.decode()[-500:]}")
    result = parse_result(stdout.decode())
    tick(result.ok)
    return result


def parse_result(output: str) -> LoadResult:
    """Return the LoadResult in the script's WRK_RESULT line of wrk's output."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            report = json.loads(line[len(RESULT_PREFIX) :])
            break
    else:
        raise WrkError(f"wrk printed no result: {output[-500:]}")
    statuses = {str(status): int(count) for status, count in report["statuses"].items()}
    for name in _SOCKET_ERRORS:
        if report["errors"][name]:
            statuses[f"wrk {name} error"] = int(report["errors"][name])
    ok = sum(count for status, count in statuses.items() if status.isdigit() and status[0] == "2")
    latency = {key: value / 1000 for key, value in report["latency_us"].items()}
    return LoadResult(
        sent=report["requests"] + sum(report["errors"][name] for name in _SOCKET_ERRORS),
        ok=ok,
        failed=sum(statuses.values()) - ok,
        elapsed=report["duration_us"] / 1e6,
        statuses=statuses,
        # wrk measures every request; it reports percentiles, not samples.
        reported_latency=Summary(
            count=report["requests"],
            p50=latency["p50"],
            p90=latency["p90"],
            p99=latency["p99"],
            max=latency["max"],
        ),
    )


def version(executable: str) -> str:
    """Return wrk's version line, e.g. "wrk 4.1.0 [epoll]"."""
    completed = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (completed.stdout or completed.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"
