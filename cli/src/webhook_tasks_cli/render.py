"""Print what `show` found, for a person reading a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markdown import Markdown
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .operations import TaskReport
from .terminal import Folded, literal, printable

MAX_SHOWN_BODY_CHARS = 200
"""How much of a stored response body `show` prints, escapes included."""


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
                "progress", literal(f"{_number(task.progress)}% {task.progress_message or ''}")
            )
        if task.result_url:
            summary.add_row("result", literal(task.result_url))
        console.print(summary)

        if report.attempts:
            _render_attempts(console, report.attempts)

        if report.history:
            history = Table(title="callbacks and deadlines", title_justify="left")
            for column in ("at", "what", "outcome"):
                history.add_column(column, no_wrap=True)
            history.add_column("detail", overflow="fold")
            for entry in report.history:
                change = (
                    f"{entry.from_status} -> {entry.to_status}"
                    if entry.outcome == "applied"
                    else ""
                )
                history.add_row(
                    _time(entry.recorded_at),
                    literal(entry.kind),
                    literal(entry.outcome),
                    literal(entry.detail or change),
                )
            console.print(history)

        for comment in report.comments:
            console.rule(literal(f"chat comment ({comment.kind}) {_time(comment.created_at)}"))
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
            f"#{attempt.attempt}  {_time(attempt.started_at)}  {attempt.outcome}"
            f"  HTTP {attempt.status_code or '-'}  {attempt.latency_ms:.0f} ms"
        )
        details = []
        if attempt.retry_at:
            details.append(f"retry at {_time(attempt.retry_at)}")
        if attempt.error:
            details.append(f"error: {printable(attempt.error)}")
        if attempt.response_body:
            body = _shortened(printable(attempt.response_body), MAX_SHOWN_BODY_CHARS)
            details.append(f"body: {body}")
        console.print(Padding(Text(summary), (0, 0, 0, 2), expand=False))
        for detail in details:
            console.print(Padding(Text(detail), (0, 0, 0, 6), expand=False))


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


def _number(value: float) -> str:
    # As reported, never in exponent form (1e-05): 0.00001, 42.5, 100.
    return f"{value:f}".rstrip("0").rstrip(".")
