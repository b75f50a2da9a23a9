"""Load results of rounds one after another combine into one figure for the whole run."""

from __future__ import annotations

from bench.load import LoadResult
from bench.stats import Summary


def test_rounds_add_up_to_the_rate_over_their_whole_time() -> None:
    first = LoadResult(sent=1010, ok=1000, failed=10, elapsed=1.0, statuses={"202": 1000})
    second = LoadResult(sent=3000, ok=3000, elapsed=2.0, statuses={"202": 2990, "503": 10})

    total = LoadResult.combined([first, second])

    assert (total.sent, total.ok, total.failed, total.elapsed) == (4010, 4000, 10, 3.0)
    assert total.statuses == {"202": 3990, "503": 10}
    # All answers over all the time, not the mean of the rounds' rates (1,000/s and 1,500/s).
    assert round(total.ok_per_second, 1) == 1333.3


def test_samples_are_kept_and_summaries_give_an_upper_bound() -> None:
    sampled = LoadResult.combined(
        [LoadResult(ok=2, latencies_ms=[1.0, 2.0]), LoadResult(ok=1, latencies_ms=[9.0])]
    )
    summarised = LoadResult.combined(
        [
            LoadResult(ok=100, reported_latency=Summary(100, 1.0, 2.0, 8.0, 9.0)),
            LoadResult(ok=300, reported_latency=Summary(300, 1.5, 1.8, 4.0, 30.0)),
        ]
    )

    assert sampled.latencies_ms == [1.0, 2.0, 9.0]
    assert sampled.latency().max == 9.0
    assert summarised.latency() == Summary(400, 1.5, 2.0, 8.0, 30.0)
