"""The step printer puts each task's lines in causal order, whatever order the topics arrive in."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console, RenderableType
from webhook_tasks_cli.watch import EventWatcher
from webhook_tasks_contracts import (
    CallbackReceived,
    ChatCommentPosted,
    Event,
    TaskCompleted,
    TaskDispatched,
    TaskFailed,
    TaskProgressed,
    TaskRef,
    Topics,
)

TOPICS = Topics("watch-test")
TASK = TaskRef(task_id="t1", user_id="u", project_id="p")
DISPATCHED = TaskDispatched(
    correlation_id="c1",
    task=TASK,
    deadline_at=datetime(2030, 1, 1, tzinfo=UTC),
    timeout_seconds=60,
    webhook_host="svc",
    ack_status="accepted",
)
CALLBACK = CallbackReceived(correlation_id="c1", status="success", result_url="https://r/x.mp4")
COMPLETED = TaskCompleted(correlation_id="c1", task=TASK, result_url="https://r/x.mp4")
COMMENT = ChatCommentPosted(correlation_id="c1", task=TASK, comment_id=1, kind="result", text="Hi")

TOPIC_OF = {
    TaskDispatched: TOPICS.task_lifecycle,
    TaskCompleted: TOPICS.task_lifecycle,
    TaskFailed: TOPICS.task_lifecycle,
    TaskProgressed: TOPICS.task_lifecycle,
    CallbackReceived: TOPICS.callback_received,
    ChatCommentPosted: TOPICS.notifications,
}
STEPS = [
    "task dispatched",
    "external service accepted",
    "callback received",
    "task completed",
    "chat comment written",
]


def printed(*events: Event, terminal: bool = False, width: int = 200) -> str:
    """Return what `up` prints for `events` on a console like the CLI's, `width` columns wide."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, emoji=False, soft_wrap=True)
    watcher = EventWatcher("127.0.0.1:1", TOPICS, console.print)
    for event in events:
        watcher.handle(TOPIC_OF[type(event)], event.model_dump_json().encode())
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def assert_in_order(text: str) -> None:
    positions = [text.index(step) for step in STEPS]
    assert positions == sorted(positions), text
    assert text.count("callback received") == 1, text
    assert text.count("chat comment written") == 1, text


def test_in_order_arrival_prints_every_step_once() -> None:
    assert_in_order(printed(DISPATCHED, CALLBACK, COMPLETED, COMMENT))


def test_a_callback_overtaken_by_its_outcome_is_told_before_it_and_not_again() -> None:
    assert_in_order(printed(DISPATCHED, COMPLETED, COMMENT, CALLBACK))


def test_a_comment_that_overtakes_its_outcome_waits_for_it() -> None:
    assert_in_order(printed(DISPATCHED, COMMENT, CALLBACK, COMPLETED))


def test_a_sync_task_is_told_as_answered_with_its_result_not_called_back() -> None:
    sync = DISPATCHED.model_copy(update={"mode": "sync", "ack_status": None})

    text = printed(sync, COMPLETED, COMMENT)

    assert "external service answered with the result (sync)" in text
    assert "callback received" not in text
    assert "deadline" not in text
    assert text.index("task completed") < text.index("chat comment written")


def test_an_event_from_before_the_mode_was_sent_reads_as_a_callback_task() -> None:
    document = DISPATCHED.model_dump(mode="json")
    del document["mode"]

    assert TaskDispatched.model_validate(document).mode == "callback"


def test_the_progress_comments_last_text_comes_after_the_outcome_it_points_to() -> None:
    progress = ChatCommentPosted(
        correlation_id="c1", task=TASK, comment_id=2, kind="progress", text="In progress 50%"
    )
    ended = progress.model_copy(update={"text": "No longer in progress", "edited": True})

    text = printed(DISPATCHED, progress, COMMENT, ended, CALLBACK, COMPLETED)

    assert text.index("In progress 50%") < text.index("task completed")
    assert text.index("task completed") < text.index("Hi") < text.index("No longer in progress")
    assert "chat comment updated on task t1 (c1):\n    No longer in progress" in text


MARKUP = "see [/var/log/render] [bold red]x[/bold red] [link=https://evil.example]here[/link]"


def test_text_from_outside_is_printed_as_it_reads_not_as_markup() -> None:
    task = TaskRef(task_id="render[v2][/x]", user_id="u", project_id="p")
    dispatched = DISPATCHED.model_copy(update={"task": task})
    callback = CallbackReceived(correlation_id="c1", status="error", error=MARKUP)
    failed = TaskFailed(correlation_id="c1", task=task, cause="callback_error", reason=MARKUP)

    text = printed(dispatched, callback, failed)
    on_a_terminal = printed(dispatched, callback, failed, terminal=True)

    assert "task dispatched render[v2][/x] to svc" in text
    assert f"callback received for c1: error {MARKUP!r}" in text
    assert f"task failed c1: {MARKUP}" in text
    assert "\x1b]8;" not in on_a_terminal  # no hidden hyperlink


def test_a_comment_prints_as_the_chat_receives_it() -> None:
    markdown = "**Task failed**\n\n> see \\[/tmp/job.log\\] \\*not bold\\* &lt;b&gt;"
    comment = COMMENT.model_copy(update={"text": markdown})

    text = printed(DISPATCHED, CALLBACK, COMPLETED, comment)

    assert "\n    **Task failed**\n\n    > see \\[/tmp/job.log\\] \\*not bold\\* &lt;b&gt;" in text


def test_a_long_link_in_a_comment_is_printed_whole_at_80_columns() -> None:
    url = "https://cdn.example.com/videos/" + "a1b2c3d4" * 12 + ".mp4"
    comment = COMMENT.model_copy(update={"text": f"**Ready**\n\n[Open the result]({url})"})

    text = printed(DISPATCHED, CALLBACK, COMPLETED, comment, width=80)

    comment_lines = text.split("chat comment written")[1].splitlines()
    assert f"({url})" in "".join(line.strip() for line in comment_lines)


def test_an_event_that_cannot_be_printed_does_not_stop_the_ones_after_it() -> None:
    shown: list[RenderableType] = []

    def printer(line: RenderableType) -> None:
        if not shown:
            shown.append("failed")
            raise RuntimeError("the terminal refused")
        shown.append(line)

    watcher = EventWatcher("127.0.0.1:1", TOPICS, printer)
    watcher.handle(TOPICS.task_lifecycle, DISPATCHED.model_dump_json().encode())
    watcher.handle(TOPICS.callback_received, CALLBACK.model_dump_json().encode())

    assert "callback received for c1" in str(shown[-1])


def test_an_error_callback_names_its_status_once_whichever_event_comes_first() -> None:
    callback = CallbackReceived(correlation_id="c1", status="error", error="bad input")
    failed = TaskFailed(correlation_id="c1", task=TASK, cause="callback_error", reason="bad input")

    in_order = printed(DISPATCHED, callback, failed)
    overtaken = printed(DISPATCHED, failed, callback)

    assert "callback received for c1: error 'bad input'" in in_order
    assert "callback received for c1: error 'bad input'" in overtaken


def test_progress_is_printed_as_show_prints_it() -> None:
    progressed = [
        TaskProgressed(
            correlation_id="c1", task=TASK, deadline_at=DISPATCHED.deadline_at, progress=value
        )
        for value in (40.0, 42.5, 0.00001)
    ]

    text = printed(DISPATCHED, *progressed)

    assert "progress 40% on c1" in text
    assert "progress 42.5% on c1" in text
    assert "progress 0.00001% on c1" in text
