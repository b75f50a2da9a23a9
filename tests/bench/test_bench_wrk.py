"""wrk loads a real server through the benchmark's Lua script, and its report is read right."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import wrk
from bench.system import ServerProcess

WRK = wrk.find_wrk()


def test_result_line_becomes_counts_and_percentiles() -> None:
    report = {
        "requests": 1200,
        "duration_us": 2_000_000,
        "statuses": {"202": 1190, "503": 10},
        "errors": {"connect": 0, "read": 2, "write": 0, "status": 10, "timeout": 1},
        "latency_us": {"p50": 1500, "p90": 4000, "p99": 9000, "max": 20000},
    }

    result = wrk.parse_result(f"Running 2s test\n{wrk.RESULT_PREFIX}{json.dumps(report)}\n")

    assert (result.ok, result.failed, result.sent) == (1190, 13, 1203)
    assert result.statuses == {"202": 1190, "503": 10, "wrk read error": 2, "wrk timeout error": 1}
    assert result.ok_per_second == 595
    assert (result.latency().p50, result.latency().p99, result.latency().max) == (1.5, 9.0, 20.0)


def test_output_without_a_result_is_an_error() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse_result("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_targets_are_one_path_and_body_a_line(tmp_path: Path) -> None:
    base, listing = wrk.targets_file(
        [
            ("http://127.0.0.1:9/v1/callbacks/a/t.1", b'{"a": 1}'),
            ("http://127.0.0.1:9/x?q=1", b"{}"),
        ],
        tmp_path,
    )

    assert base == "http://127.0.0.1:9"
    assert listing.read_text() == '/v1/callbacks/a/t.1\t{"a": 1}\n/x?q=1\t{}\n'


def test_targets_on_two_servers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one server"):
        wrk.targets_file([("http://a:1/x", b"{}"), ("http://b:1/x", b"{}")], tmp_path)


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (make bench installs it)")
def test_wrk_posts_every_target_to_a_real_server(tmp_path: Path) -> None:
    assert WRK is not None
    server = ServerProcess("noop", tmp_path)
    try:
        server.wait_ready()
        targets = [(f"{server.url}/v1/callbacks/c-{i}/t", b'{"n": %d}' % i) for i in range(50)]

        result = asyncio.run(wrk.closed_loop(WRK, targets, connections=4, duration=1))
    finally:
        server.stop()

    assert result.ok > 50, result
    assert set(result.statuses) == {"202"}, result.statuses
    assert result.failed == 0
    assert 0.9 < result.elapsed < 3
    assert 0 < result.latency().p50 <= result.latency().p99 <= result.latency().max
    assert wrk.version(WRK).startswith("wrk")
