"""Compute percentiles and hold the rows of the results table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `samples` (`fraction` in 0..1); NaN if empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def ratio_range(ratios: Sequence[float]) -> str:
    """Return the lowest and highest of `ratios` as "0.19-0.21", or one figure if they agree."""
    if not ratios:
        return "not measured"
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return low if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class Summary:
    """The shape of one latency distribution, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Summary:
        """Summarise samples given in milliseconds."""
        return cls(
            count=len(samples_ms),
            p50=percentile(samples_ms, 0.50),
            p90=percentile(samples_ms, 0.90),
            p99=percentile(samples_ms, 0.99),
            max=max(samples_ms) if samples_ms else math.nan,
        )


Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure beside the ceiling measured in the same run."""

    group: str
    name: str
    figure: float
    ceiling: float
    unit: str
    better: Better
    ceiling_label: str
    how: str

    @property
    def ratio(self) -> float:
        """Return figure / ceiling (NaN when the ceiling is zero or missing)."""
        if not self.ceiling or math.isnan(self.ceiling) or math.isnan(self.figure):
            return math.nan
        return self.figure / self.ceiling

    def as_json(self) -> dict[str, Any]:
        """Return the row with its ratio, for the results file."""
        return {**asdict(self), "ratio": _finite(self.ratio)}


@dataclass
class PhaseResult:
    """What one phase measured: rows for the table, samples for the chart, facts for the file."""

    rows: list[Row] = field(default_factory=list)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value
