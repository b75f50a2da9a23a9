"""What `show` prints about dispatch attempts: every field, and nothing a hostile body can abuse."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from webhook_tasks_cli.operations import TaskReport
from webhook_tasks_cli.render import MAX_SHOWN_BODY_CHARS, render_reports
from webhook_tasks_dispatcher.domain import TaskStatus
from webhook_tasks_dispatcher.repository import AttemptRow, HistoryRow, TaskRow
from webhook_tasks_notifier.repository import Comment, Notification

STARTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RETRY_AT = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
TASK = TaskRow(
    correlation_id="c1",
    task_id="t1",
    user_id="u",
    project_id="p",
    assistant_id=None,
    followers=[],
    webhook_url="https://svc.example/hook",
    mode="callback",
    timeout_seconds=60,
    status=TaskStatus.INITIATED,
    status_reason=None,
    result_url=None,
    result_metadata=None,
    ack_status="accepted",
    estimated_completion="30",
    progress=None,
    progress_message=None,
    deadline_at=None,
    created_at=STARTED,
    updated_at=STARTED,
    dispatched_at=STARTED,
    finished_at=None,
)


def attempt(
    number: int,
    *,
    status_code: int | None = 503,
    outcome: str = "rejected",
    error: str | None = None,
    body: str | None = None,
    retry_at: datetime | None = None,
) -> AttemptRow:
    return AttemptRow("c1", number, STARTED, 12.3, status_code, outcome, error, body, retry_at)


def printed(*attempts: AttemptRow, terminal: bool = False) -> str:
    """Return what `show` prints, wide enough that no line wraps."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=1000,
        force_terminal=terminal,
        color_system="truecolor" if terminal else None,
    )
    render_reports(console, [TaskReport(TASK, list(attempts), [], None, [], [])])
    return out.getvalue()


def shown(*attempts: AttemptRow) -> list[str]:
    """Return the attempt lines `show` prints; not to a terminal, so free of escape codes."""
    lines = [line.rstrip() for line in printed(*attempts).splitlines()]
    start = lines.index("dispatch attempts") + 1
    return lines[start : start + lines[start:].index("")]


def test_each_attempt_lists_its_retry_time_error_and_body_under_it() -> None:
    lines = shown(
        attempt(1, body='{"error": "busy"}', retry_at=RETRY_AT),
        attempt(2, status_code=None, outcome="unreachable", error="ConnectError: refused"),
        attempt(3, status_code=202, outcome="accepted", body='{"status": "accepted"}'),
    )

    assert lines == [
        "  #1  2026-01-01T12:00:00.000+00:00  rejected  HTTP 503  12 ms",
        "      retry at 2026-01-01T12:00:05.000+00:00",
        '      body: {"error": "busy"}',
        "  #2  2026-01-01T12:00:00.000+00:00  unreachable  HTTP -  12 ms",
        "      error: ConnectError: refused",
        "  #3  2026-01-01T12:00:00.000+00:00  accepted  HTTP 202  12 ms",
        '      body: {"status": "accepted"}',
    ]


def test_a_long_body_is_shortened_with_an_ellipsis() -> None:
    lines = shown(attempt(1, body="x" * 5000))

    assert lines[1] == "      body: " + "x" * (MAX_SHOWN_BODY_CHARS - 1) + "…"


def test_a_hostile_body_cannot_reach_the_terminal() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\nfake line\u202eevil [bold]not markup[/] :fire:"

    lines = shown(attempt(1, body=hostile, error="Boom\x1b[1A"))
    on_a_terminal = printed(attempt(1, body=hostile, error="Boom\x1b[1A"), terminal=True)

    assert lines[1:] == [
        "      error: Boom\\x1b[1A",
        "      body: \\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\r\\nfake line\\u202eevil"
        " [bold]not markup[/] :fire:",
    ]
    assert not any(code in on_a_terminal for code in ("\x1b]0", "\x1b[2J", "\x1b[1A", "\u202e"))


def test_printable_text_of_any_script_is_kept() -> None:
    lines = shown(attempt(1, body="Готово ✓ 完成 café"))

    assert lines[1] == "      body: Готово ✓ 完成 café"


MARKUP = "see [/tmp/job.log] [bold red]x[/bold red] [link=https://evil.example]here[/link] :fire:"


def printed_report(report: TaskReport, *, width: int = 1000, terminal: bool = False) -> str:
    """Return what `show` prints for `report` at `width` columns, trailing blanks removed."""
    out = io.StringIO()
    # Soft-wrapping, as the CLI's own console does.
    console = Console(
        file=out,
        width=width,
        force_terminal=terminal,
        color_system="truecolor" if terminal else None,
        soft_wrap=True,
    )
    render_reports(console, [report])
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def test_text_from_the_database_is_shown_as_it_reads_not_as_markup() -> None:
    task = dataclasses.replace(
        TASK,
        task_id="render[v2][/x]",
        status=TaskStatus.FAILED,
        status_reason=MARKUP,
        progress=50.0,
        progress_message=MARKUP,
        result_url="https://cdn.example/[/x].mp4",
    )
    history = HistoryRow("e1", "callback", "ignored", MARKUP, None, None, STARTED)
    notified = Notification(1, "c1", 1, "user[/x]", "error", STARTED)
    report = TaskReport(task, [], [history], None, [], [notified])

    text = printed_report(report)
    on_a_terminal = printed_report(report, terminal=True)

    assert "task            render[v2][/x]" in text
    assert f"state           failed ({MARKUP})" in text
    assert f"progress        50% {MARKUP}" in text
    assert "result          https://cdn.example/[/x].mp4" in text
    assert MARKUP in text.split("callbacks and deadlines")[1]
    assert "notified: user[/x]" in text
    assert "\x1b]8;" not in on_a_terminal  # no hidden hyperlink


def test_a_comment_is_shown_as_its_markdown_means() -> None:
    text = "**Task failed**\n\n> see \\[/tmp/job.log\\] \\*not bold\\* &lt;b&gt; :fire:"
    comment = Comment(1, "c1", "t1", "error", text, STARTED, STARTED)

    shown = printed_report(TaskReport(TASK, [], [], None, [comment], []))

    assert "Task failed" in shown
    assert "**" not in shown
    assert "see [/tmp/job.log] *not bold* <b> :fire:" in shown


def test_a_long_result_url_is_shown_whole_at_80_columns() -> None:
    url = "https://cdn.example.com/videos/" + "a1b2c3d4" * 12 + ".mp4?sig=" + "f" * 40
    task = dataclasses.replace(TASK, result_url=url)

    shown = printed_report(TaskReport(task, [], [], None, [], []), width=80)

    lines = shown.splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("result"))
    folded = "".join(line.strip() for line in lines[start : start + 4]).removeprefix("result")
    assert url in folded
    assert "…" not in shown


def test_a_long_link_or_reason_in_a_comment_is_shown_whole_at_80_columns() -> None:
    url = "https://cdn.example.com/videos/" + "a1b2c3d4" * 12 + ".mp4"
    reason = "r" * 150
    text = f"**Task failed**\n\n[Open the result]({url})\n\n> {reason}"
    comment = Comment(1, "c1", "t1", "error", text, STARTED, STARTED)

    shown = printed_report(TaskReport(TASK, [], [], None, [comment], []), width=80)

    unfolded = "".join(line.strip().removeprefix("▌ ") for line in shown.splitlines())
    assert f"({url})" in unfolded
    assert reason in unfolded


def test_progress_is_shown_as_reported_never_in_exponent_form() -> None:
    task = dataclasses.replace(TASK, progress=0.00001, progress_message="warming up")
    report = TaskReport(task, [], [], None, [], [])

    assert "progress        0.00001% warming up" in printed_report(report)


def unwrapped(text: str) -> str:
    """Return `text` without its whitespace: what is left whatever the lines were wrapped at."""
    return "".join(text.split())


REFUSED = "connection refused ([Errno 111] Connect call failed ('127.0.0.1', 18093))"
ACCEPTED_BODY = (
    '{"correlationId":"bff1f8a0-5b7e-4c1a-9d2f-0e6c3a1b2c4d","status":"submitted",'
    '"estimatedCompletion":"2026-01-01T12:05:00Z"}'
)
IGNORED = "the task had already completed; it said: the render farm is busy, try again later"


@pytest.mark.parametrize("width", [50, 60, 70, 80])
def test_every_attempt_and_history_entry_is_shown_whole_on_a_narrow_console(width: int) -> None:
    report = TaskReport(
        TASK,
        [
            attempt(1, status_code=None, outcome="unreachable", error=REFUSED, retry_at=RETRY_AT),
            attempt(2, status_code=202, outcome="accepted", body=ACCEPTED_BODY),
        ],
        [
            HistoryRow("e1", "callback:error", "ignored", IGNORED, None, None, STARTED),
            HistoryRow(
                "e2", "callback:success", "applied", None, "initiated", "completed", RETRY_AT
            ),
        ],
        None,
        [],
        [],
    )

    shown = printed_report(report, width=width)

    assert all(len(line) <= width for line in shown.splitlines())
    assert "…" not in shown
    for text in [
        "#1  2026-01-01T12:00:00.000+00:00  unreachable  HTTP -  12 ms",
        "retry at 2026-01-01T12:00:05.000+00:00",
        f"error: {REFUSED}",
        "#2  2026-01-01T12:00:00.000+00:00  accepted  HTTP 202  12 ms",
        f"body: {ACCEPTED_BODY}",
        "2026-01-01T12:00:00.000+00:00 callback:error ignored",
        IGNORED,
        "2026-01-01T12:00:05.000+00:00 callback:success applied",
        "initiated -> completed",
    ]:
        assert unwrapped(text) in unwrapped(shown), text


def test_the_history_is_a_table_where_it_fits() -> None:
    history = HistoryRow("e1", "callback:error", "ignored", IGNORED, None, None, STARTED)

    shown = printed_report(TaskReport(TASK, [], [history], None, [], []), width=120)

    assert "┃ at " in shown
    assert unwrapped(IGNORED) in unwrapped(shown.replace("│", ""))


def test_a_chat_comment_s_heading_is_shown_whole_on_a_narrow_console() -> None:
    comment = Comment(1, "c1", "t1", "late_result", "Hi", STARTED, STARTED)

    shown = printed_report(TaskReport(TASK, [], [], None, [comment], []), width=50)

    assert "chat comment (late_result) 2026-01-01T12:00:00.000+00:00" in shown
