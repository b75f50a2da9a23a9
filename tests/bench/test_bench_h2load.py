"""h2load offers a fixed rate to a real server, and its per-request log is read right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import h2load
from bench.gateway import fixed_rate_for
from bench.system import ServerProcess

H2LOAD = h2load.find_h2load()
SECOND_US = 1_000_000


def _log(rows: list[tuple[int, int, int]]) -> str:
    # As h2load writes it: start (µs since the epoch), status, µs to the answer; rows in the
    # order the answers came, not the order of the starts.
    return "".join(f"{start}\t{status}\t{micros}\n" for start, status, micros in rows)


def test_log_becomes_counts_percentiles_and_achieved_rate() -> None:
    epoch = 1_790_000_000 * SECOND_US
    # 100 requests 10 ms apart: 1 ms to 100 ms, in reverse order of their starts.
    rows = [(epoch + i * 10_000, 202, (i + 1) * 1000) for i in range(100)][::-1]
    rows[0] = (rows[0][0], 503, 1000)  # the last request (the 100 ms one) got a 503
    rows.append((epoch + 995_000, -1, 2000))  # a stream that failed

    result = h2load.parse_log(_log(rows), interval_ms=50, total=103, started=102)

    assert (result.sent, result.ok, result.failed) == (102, 99, 4)
    assert result.statuses == {
        "202": 99,
        "503": 1,
        h2load.FAILED_STREAM: 1,
        h2load.UNANSWERED: 1,
        h2load.NOT_SENT: 1,
    }
    latency = result.latency()
    assert (latency.count, latency.p50, latency.p99, latency.max) == (99, 50.0, 99.0, 99.0)
    assert result.elapsed == pytest.approx(1.079)  # first start to last answer (980 + 99 ms)
    # 101 sends in 0.995 s between the first and the last.
    assert result.details["achieved_per_second"] == pytest.approx(100 / 0.995, abs=0.1)
    # Answers of 51..99 ms exceed the 50 ms between sends on a connection: 49 of them.
    assert result.details["answers_slower_than_interval"] == 49
    corrected = result.details["latency_corrected_for_coordinated_omission_ms"]
    assert corrected["count"] == 99
    assert corrected["p99"] == latency.p99


def test_steady_rate_leaves_out_the_connections_starting_and_finishing() -> None:
    epoch = 1_790_000_000 * SECOND_US
    # 3 s at 1,000/s, but at half that rate for the first and last 100 ms.
    starts = (
        [epoch + i * 2000 for i in range(50)]
        + [epoch + 100_000 + i * 1000 for i in range(2800)]
        + [epoch + 2_900_000 + i * 2000 for i in range(50)]
    )
    rows = [(start, 200, 500) for start in starts]

    result = h2load.parse_log(
        _log(rows), interval_ms=64, total=len(rows), started=len(rows), ramp_ms=100
    )

    assert result.details["achieved_per_second"] < 970
    assert result.details["achieved_per_second_steady"] == pytest.approx(1000, rel=0.001)
    assert result.details["sends_per_whole_second_steady"] == {"min": 1000, "max": 1000}
    assert result.details["answers_slower_than_interval"] == 0
    assert result.latency().p99 == 0.5


def test_sends_held_back_by_a_slow_answer_count_from_their_planned_time() -> None:
    # A 130 ms answer on a connection sending every 50 ms held back two sends, planned
    # 50 and 100 ms after it left: they waited about 80 and 30 ms.
    assert h2load.omitted_latencies([130.0, 10.0, 1.0], interval_ms=50) == [80.0, 30.0]
    assert h2load.omitted_latencies([], interval_ms=50) == []
    # Their waits replace the shortest latencies: as many requests, none shorter than before.
    latencies = [130.0, 10.0, 1.0, 2.0, 3.0]
    corrected = h2load.corrected_latencies(latencies, interval_ms=50)
    assert sorted(corrected) == [3.0, 10.0, 30.0, 80.0, 130.0]
    assert h2load.corrected_latencies([1.0, 2.0], interval_ms=50) == [1.0, 2.0]


def test_summary_gives_requests_planned_and_started() -> None:
    output = (
        "finished in 10.05s, 1990.58 req/s, 299.36KB/s\n"
        "requests: 20000 total, 19990 started, 19990 done, 19990 succeeded, 0 failed, "
        "0 errored, 0 timeout\n"
    )

    assert h2load.parse_summary(output) == (20000, 19990)
    with pytest.raises(h2load.H2loadError):
        h2load.parse_summary("connect to 127.0.0.1:1 failed\n")


def test_schedule_keeps_each_connection_at_one_send_every_64_ms() -> None:
    full = h2load.schedule(2000, 10)
    assert (full.connections, full.requests, full.connect_every_ms) == (128, 20_000, 1)
    assert full.interval_ms == pytest.approx(64)
    quick = h2load.schedule(200, 1.5)
    assert (quick.connections, quick.requests, quick.connect_every_ms) == (13, 300, 5)
    assert quick.interval_ms == pytest.approx(65)
    # More than 2,000/s: capped at 128 connections, each sending more often.
    assert h2load.schedule(4000, 10).connections == 128


def test_fixed_rate_is_the_planned_one_when_the_gateway_sustains_it() -> None:
    assert fixed_rate_for(2000, 2600)[0] == 2000
    rate, why = fixed_rate_for(2000, 1500)
    assert rate == 750
    assert "lowered" in why


@pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed (make bench installs it)")
def test_h2load_offers_the_planned_rate_to_a_real_server(tmp_path: Path) -> None:
    assert H2LOAD is not None
    server = ServerProcess("noop", tmp_path)
    try:
        server.wait_ready()
        result = asyncio.run(
            h2load.fixed_rate(
                H2LOAD, f"{server.url}/v1/callbacks/c-1/t", b'{"n": 1}', rate=400, duration=2
            )
        )
    finally:
        server.stop()

    assert (result.sent, result.ok, result.failed) == (800, 800, 0), result.statuses
    assert result.statuses == {"202": 800}
    assert result.details["planned_per_second"] == 400
    assert result.details["achieved_per_second_steady"] == pytest.approx(400, rel=0.05)
    assert 1.8 < result.elapsed < 3
    assert 0 < result.latency().p50 <= result.latency().p99 <= result.latency().max
    assert h2load.version(H2LOAD).startswith("h2load nghttp2/")
