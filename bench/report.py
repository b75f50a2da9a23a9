"""Show the results: a rich table on the terminal, a JSON file, a PNG of the distributions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .stats import Row


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if value >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.1f} ms"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if math.isnan(ratio):
        return "n/a"
    if ratio < 0.01:
        return f"1/{1 / ratio:,.0f}"
    return f"{ratio:.2f}"


def table(rows: Sequence[Row], *, title: str) -> Table:
    """Return the results table: figure, ceiling measured in the same run, and their ratio."""
    result = Table(title=title, title_justify="left")
    result.add_column("")
    result.add_column("measure", no_wrap=True)
    result.add_column("figure", justify="right", no_wrap=True)
    result.add_column("ceiling", justify="right", no_wrap=True)
    result.add_column("ceiling is", style="dim")
    result.add_column("figure / ceiling", justify="right", no_wrap=True)
    group = None
    for row in rows:
        if row.group != group:
            if group is not None:
                result.add_section()
            group = row.group
            label = f"[bold]{row.group}[/]"
        else:
            label = ""
        result.add_row(
            label,
            row.name,
            _number(row.figure, row.unit),
            _number(row.ceiling, row.unit),
            row.ceiling_label,
            _ratio(row),
        )
    return result


def print_results(console: Console, rows: Sequence[Row], *, title: str) -> None:
    """Print the table, then how each figure was measured."""
    console.print(table(rows, title=title))
    seen: set[str] = set()
    for row in rows:
        if row.how not in seen:
            seen.add(row.how)
            console.print(f"[dim]{row.group}: {row.how}[/]")


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write the results file."""
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def write_chart(path: Path, groups: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Draw each group's latency distributions as cumulative curves on a log axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    shown = {name: series for name, series in groups.items() if any(series.values())}
    if not shown:
        return
    figure, axes = plt.subplots(
        len(shown), 1, figsize=(9, 3.2 * len(shown)), squeeze=False, layout="constrained"
    )
    for axis, (name, series) in zip(axes[:, 0], shown.items(), strict=True):
        for label, samples in series.items():
            if not samples:
                continue
            ordered = sorted(max(value, 0.01) for value in samples)
            fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
            axis.step(ordered, fractions, where="post", label=f"{label} (n={len(ordered)})")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
        axis.set_ylim(0, 1.01)
        axis.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
        axis.axhline(0.50, color="grey", linewidth=0.5, linestyle=":")
        axis.set_title(name)
        axis.set_xlabel("milliseconds (log scale)")
        axis.set_ylabel("fraction ≤ x")
        axis.legend(loc="lower right", fontsize="small")
        axis.grid(True, which="both", linewidth=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)
