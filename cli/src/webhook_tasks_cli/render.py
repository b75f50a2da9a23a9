"""Print what `show` found, for a person reading a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from rich.cells import cell_len
from rich.console import Console
from rich.markdown import Markdown
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .operations import TaskReport
from .terminal import Folded, literal, plain_number, printable

MAX_SHOWN_BODY_CHARS = 200
"""How much of a stored response body `show` prints, escapes included."""
HISTORY_COLUMNS = ("at", "what", "outcome", "detail")
MIN_DETAIL_WIDTH = 24
"""The narrowest the history table's detail column gets; narrower, the history is a list."""


def render_reports(console: Console, reports: list[TaskReport]) -> None:
    """Print each run of the task: state, timestamps, attempts, history, comments."""
    for report in reports:
        task = report.task
        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold")
        # Folded, not cut: a result URL is no use without its end.
        summary.add_column(overflow="fold")
        summary.add_row("task", literal(task.task_id))
        summary.add_row("correlation id", literal(task.correlation_id))
        summary.add_row("state", _state(task.status.value, task.status_reason))
        summary.add_row("user / project", literal(f"{task.user_id} / {task.project_id}"))
        summary.add_row("webhook", literal(_without_query(task.webhook_url)))
        summary.add_row("mode, timeout", literal(f"{task.mode}, {task.timeout_seconds}s"))
        summary.add_row("created", _time(task.created_at))
        summary.add_row("dispatched", _time(task.dispatched_at))
        summary.add_row("deadline", _time(report.deadline_at or task.deadline_at))
        summary.add_row("finished", _time(task.finished_at))
        if task.ack_status or task.estimated_completion:
            summary.add_row(
                "acknowledged",
                literal(f"{task.ack_status or '-'} (eta {task.estimated_completion or '-'})"),
            )
        if task.progress is not None:
            summary.add_row(
                "progress", literal(f"{plain_number(task.progress)}% {task.progress_message or ''}")
            )
        if task.result_url:
            summary.add_row("result", literal(task.result_url))
        console.print(summary)

        if report.attempts:
            _render_attempts(console, report.attempts)

        if report.history:
            _render_history(console, report.history)

        for comment in report.comments:
            _rule(console, literal(f"chat comment ({comment.kind}) {_time(comment.created_at)}"))
            # Markdown, as the chat shows it (the notifier escaped what came from outside),
            # each link's URL written out: a log or a pipe keeps no hidden hyperlink.
            console.print(Folded(Markdown(comment.text, hyperlinks=False)))
        if report.notifications:
            users = ", ".join(sorted({item.user_id for item in report.notifications}))
            console.print(Text.assemble(Text("notified:", style="bold"), " ", literal(users)))
        console.print()


def _render_attempts(console: Console, attempts: list[Any]) -> None:
    # A line per attempt with its details indented under it: a table has no room for a body.
    console.print(Text("dispatch attempts", style="table.title"))
    for attempt in attempts:
        summary = (
            f"{_time(attempt.started_at)}  {attempt.outcome}"
            f"  HTTP {attempt.status_code or '-'}  {attempt.latency_ms:.0f} ms"
        )
        console.print(_hanging(f"#{attempt.attempt}", summary, indent=2, gap=2))
        if attempt.retry_at:
            console.print(_hanging("retry at", _time(attempt.retry_at), indent=6))
        if attempt.error:
            console.print(_hanging("error:", printable(attempt.error), indent=6))
        if attempt.response_body:
            body = _shortened(printable(attempt.response_body), MAX_SHOWN_BODY_CHARS)
            console.print(_hanging("body:", body, indent=6))


def _render_history(console: Console, history: list[Any]) -> None:
    rows = [
        (
            _time(entry.recorded_at),
            printable(entry.kind),
            printable(entry.outcome),
            printable(
                entry.detail
                or (
                    f"{entry.from_status} -> {entry.to_status}"
                    if entry.outcome == "applied"
                    else ""
                )
            ),
        )
        for entry in history
    ]
    fixed = [
        max(cell_len(text) for text in column)
        for column in zip(HISTORY_COLUMNS, *rows, strict=True)
    ]
    detail_width = min(fixed[3], MIN_DETAIL_WIDTH)
    # Borders and a space either side of each cell: 3 per column and 1 more.
    if sum(fixed[:3]) + detail_width + 3 * len(HISTORY_COLUMNS) + 1 <= console.width:
        table = Table(title="callbacks and deadlines", title_justify="left")
        for column in HISTORY_COLUMNS[:3]:
            table.add_column(column, no_wrap=True)
        table.add_column("detail", overflow="fold", min_width=detail_width)
        for row in rows:
            table.add_row(*(Text(text) for text in row))
        console.print(table)
        return
    # Too narrow for the table to show every cell whole: a line per entry, as for attempts.
    console.print(Text("callbacks and deadlines", style="table.title"))
    for at, what, outcome, detail in rows:
        console.print(_hanging(at, f"{what}  {outcome}", indent=2, gap=2))
        if detail:
            console.print(_hanging(None, detail, indent=6))


def _hanging(label: str | None, text: str, *, indent: int, gap: int = 1) -> Padding:
    """Return `label` and `text` indented, the text wrapped under itself and never cut."""
    # A grid, not a Padding of the Text: the console soft-wraps, so a padded Text is cut.
    line = Table.grid(padding=(0, gap, 0, 0))
    if label is not None:
        line.add_column(no_wrap=True)
    line.add_column(overflow="fold")
    line.add_row(*([] if label is None else [Text(label)]), Text(text))
    return Padding(line, (0, 0, 0, indent), expand=False)


def _rule(console: Console, title: Text) -> None:
    # A rule cuts a title too long for it: such a title goes under a bare rule, whole.
    if title.cell_len + 4 <= console.width:
        console.rule(title)
    else:
        console.rule()
        console.print(title)


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _state(status: str, reason: str | None) -> Text:
    colour = {"completed": "green", "failed": "red", "expired": "yellow"}.get(status, "cyan")
    return Text.assemble(literal(status, colour), literal(f" ({reason})" if reason else ""))


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds") if value else "-"


def _without_query(url: str) -> str:
    # A query string may carry a key of the external service's; it is not ours to print.
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()
