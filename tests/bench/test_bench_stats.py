"""The benchmark's summaries of its rounds."""

from __future__ import annotations

from bench.stats import ratio_range


def test_a_ratio_range_gives_the_lowest_and_highest_or_one_figure_when_they_agree() -> None:
    assert ratio_range([0.21, 0.19, 0.204]) == "0.19-0.21"
    assert ratio_range([0.201, 0.204]) == "0.20"
    assert ratio_range([0.25]) == "0.25"
    assert ratio_range([]) == "not measured"
