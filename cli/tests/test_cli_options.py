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
SHOW = ("-m", "webhook_tasks_cli", "show")
NOT_UTF8 = "\udcff"
"""How Python hands a program an argument holding the byte 0xff, which is not UTF-8."""
# Wide enough that typer's error box never wraps the reason.
WIDE = {"COLUMNS": "400"}


def assert_usage_error(args: tuple[str, ...], reason: str, **env: str) -> None:
    # No stack and no settings: a value checked only after the lookup would say so instead.
    done = run(*args, **WIDE, **env)

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
        (("--param", "steps=NaN"), "'--param': steps: JSON has no NaN or Infinity"),
        (("--param", "steps=[1, Infinity]"), "'--param': steps: JSON has no NaN or Infinity"),
        (("--param", "steps=1e999"), "'--param': steps: JSON has no NaN or Infinity"),
        (("--param", f"style={NOT_UTF8}"), "'--param': is not UTF-8 text"),
        (("--task-id", NOT_UTF8), "'--task-id': is not UTF-8 text"),
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
        (("success", "--metadata", "a=NaN"), "'--metadata': a: JSON has no NaN or Infinity"),
        (("success", "--metadata", "a=-Infinity"), "'--metadata': a: JSON has no NaN or Infinity"),
        (("error", "--error", NOT_UTF8), "'--error': is not UTF-8 text"),
        (
            ("success", "--callback-url", "http://127.0.0.1:99999/x"),
            "'--callback-url': must have a port from 1 to 65535",
        ),
        (
            ("success", "--callback-url", f"http://h/{NOT_UTF8}"),
            "'--callback-url': must be printable UTF-8 text",
        ),
        (
            ("success", "--callback-url", "http://[::1/x"),
            "'--callback-url': must be an absolute http or https URL",
        ),
    ],
)
def test_callback_refuses_options_its_status_does_not_take(
    args: tuple[str, ...], reason: str
) -> None:
    assert_usage_error((*CALLBACK, *args), reason)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((*SHOW, NOT_UTF8), "'task_or_correlation_id': is not UTF-8 text"),
        (
            (*SHOW, "--dispatcher-schema", NOT_UTF8, "t1"),
            "'--dispatcher-schema' (env var: 'DISPATCHER_DATABASE_SCHEMA'): is not UTF-8 text",
        ),
        ((*CALLBACK[:-1], NOT_UTF8, "success"), "'correlation_id': is not UTF-8 text"),
    ],
)
def test_an_id_or_schema_that_is_not_utf8_is_a_usage_error(
    args: tuple[str, ...], reason: str
) -> None:
    assert_usage_error(args, reason)


def test_a_schema_from_the_environment_that_is_not_utf8_is_a_usage_error() -> None:
    assert_usage_error(
        (*SHOW, "t1"),
        "'--dispatcher-schema' (env var: 'DISPATCHER_DATABASE_SCHEMA'): is not UTF-8 text",
        DISPATCHER_DATABASE_SCHEMA=NOT_UTF8,
    )


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


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[TaskRequested]:
    """Record each task `submit` publishes instead of sending it."""
    requests: list[TaskRequested] = []

    async def publish(config: StackConfig, request: TaskRequested) -> None:
        requests.append(request)

    monkeypatch.setattr(main, "kafka_config", lambda: StackConfig("127.0.0.1:1"))
    monkeypatch.setattr(main, "publish_task", publish)
    return requests


SUBMIT_ARGS = ["submit", "--webhook-url", "https://svc.example/", "--prompt", "p"]


def test_submit_reads_the_authorization_from_webhook_auth(published: list[TaskRequested]) -> None:
    done = CliRunner().invoke(main.app, SUBMIT_ARGS, env={"WEBHOOK_AUTH": "Bearer s3cret"})

    assert done.exit_code == 0, done.output
    auth = published[0].task_metadata.webhook_auth
    assert auth is not None
    assert auth.get_secret_value() == "Bearer s3cret"
    assert "s3cret" not in done.output


def test_submit_s_auth_option_wins_over_webhook_auth(published: list[TaskRequested]) -> None:
    done = CliRunner().invoke(
        main.app, [*SUBMIT_ARGS, "--auth", "Bearer given"], env={"WEBHOOK_AUTH": "Bearer env"}
    )

    assert done.exit_code == 0, done.output
    auth = published[0].task_metadata.webhook_auth
    assert auth is not None
    assert auth.get_secret_value() == "Bearer given"


def test_submit_s_help_names_webhook_auth() -> None:
    done = CliRunner().invoke(main.app, ["submit", "--help"], env={"COLUMNS": "400"})

    assert "WEBHOOK_AUTH" in done.output
