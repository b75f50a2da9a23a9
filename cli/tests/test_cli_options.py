"""An option given a value it cannot take is a usage error (exit 2), found before any lookup."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner
from webhook_tasks_cli import main
from webhook_tasks_cli.config import StackConfig
from webhook_tasks_contracts import TaskRequested

from .conftest import run

SUBMIT = ("-m", "webhook_tasks_cli", "submit", "--webhook-url", "http://127.0.0.1:9/x")
CALLBACK = ("-m", "webhook_tasks_cli", "callback", "c1")
# Wide enough that typer's error box never wraps the reason.
WIDE = {"COLUMNS": "400"}


def assert_usage_error(args: tuple[str, ...], reason: str) -> None:
    # No stack and no settings: a value checked only after the lookup would say so instead.
    done = run(*args, **WIDE)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Usage: "), done.stderr
    assert reason in done.stderr
    assert "no running stack" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--timeout", "0"), "'--timeout'"),
        (("--timeout", "604801"), "--timeout: Input should be less than or equal to 604800"),
        (("--webhook-url", "notaurl"), "--webhook-url: must be an absolute http or https URL"),
        (("--param", "foo"), "'--param': expects KEY=VALUE, got 'foo'"),
        (("--param", "correlationId=1"), "--param: webhookParams may not set reserved fields"),
        (("--user-id", ""), "--user-id: String should have at least 1 character"),
    ],
)
def test_submit_refuses_a_value_it_cannot_take_as_a_usage_error(
    args: tuple[str, ...], reason: str
) -> None:
    assert_usage_error((*SUBMIT, "--prompt", "p", *args), reason)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("success", "--metadata", "foo"), "'--metadata': expects KEY=VALUE, got 'foo'"),
        (
            ("success", "--error", "e", "--progress", "5", "--message", "m"),
            "'--error', '--progress', '--message': cannot go with status success",
        ),
        (
            ("error", "--result-url", "https://r/x.mp4", "--metadata", "a=b"),
            "'--result-url', '--metadata': cannot go with status error; it takes --error",
        ),
        (("progress", "--error", "e"), "'--error': cannot go with status progress"),
    ],
)
def test_callback_refuses_options_its_status_does_not_take(
    args: tuple[str, ...], reason: str
) -> None:
    assert_usage_error((*CALLBACK, *args), reason)


@pytest.mark.parametrize("task_id", ["render[v2]", "a[/x]", "[bold red]x[/bold red]", ":fire:"])
def test_submit_prints_the_task_id_exactly_as_given(
    task_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[TaskRequested] = []

    async def publish(config: StackConfig, request: TaskRequested) -> None:
        published.append(request)

    monkeypatch.setattr(main, "kafka_config", lambda: StackConfig("127.0.0.1:1"))
    monkeypatch.setattr(main, "publish_task", publish)

    done = CliRunner().invoke(
        main.app,
        ["submit", "--webhook-url", "https://svc.example/", "--prompt", "p", "--task-id", task_id],
    )

    assert done.exit_code == 0, done.output
    assert done.output == f"{task_id}\n"
    assert [request.task_id for request in published] == [task_id]
