"""The CLI against a running system, as a user types it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from .conftest import RunningSystem, finished, wait_until

pytestmark = pytest.mark.e2e


def cli(system: RunningSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook_tasks_cli", *args],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def submit(system: RunningSystem, path: str, *options: str) -> str:
    """Submit a task to the demo service's `path` from the CLI; return its task id."""
    submitted = await asyncio.to_thread(
        cli, system, "submit", "--webhook-url", f"{system.demo_url}{path}", *options
    )
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


async def test_submit_callback_and_show(system: RunningSystem) -> None:
    task_id = await submit(
        system,
        "/generate-video",
        "--prompt",
        "a cat playing chess",
        "--param",
        "outcome=never",
        "--auth",
        "Bearer cli-secret-value",
    )
    (report,) = await wait_until(
        lambda: system.reports(task_id),
        lambda r: len(r) == 1 and r[0].task.status.value == "initiated",
    )

    called_back = await asyncio.to_thread(
        cli,
        system,
        "callback",
        report.task.correlation_id,
        "success",
        "--result-url",
        "https://cdn.example.com/chess.mp4",
        "--metadata",
        "title=Chess",
        "--metadata",
        "duration=12s",
    )
    assert called_back.returncode == 0, called_back.stderr
    assert "202" in called_back.stdout
    await wait_until(lambda: system.reports(task_id), finished)

    shown = await asyncio.to_thread(cli, system, "show", task_id)
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout
    assert report.task.correlation_id in shown.stdout
    assert "https://cdn.example.com/chess.mp4" in shown.stdout
    assert "Chess" in shown.stdout
    assert "cli-secret-value" not in shown.stdout


async def test_submit_in_sync_mode_completes_the_task_from_the_answer(
    system: RunningSystem,
) -> None:
    task_id = await submit(
        system,
        "/generate-video-sync",
        "--prompt",
        "a dog surfing",
        "--mode",
        "sync",
        "--param",
        "delaySeconds=0.5",
        "--timeout",
        "30",
    )
    (report,) = await wait_until(lambda: system.reports(task_id), finished)
    assert report.task.status.value == "completed"
    assert report.task.result_url is not None
    assert report.task.result_url.endswith(f"/results/{report.task.correlation_id}.mp4")

    shown = await asyncio.to_thread(cli, system, "show", task_id)
    assert shown.returncode == 0, shown.stderr
    assert "sync, 30s" in shown.stdout
    assert "completed" in shown.stdout


async def test_an_unknown_mode_is_refused_with_the_choices(system: RunningSystem) -> None:
    result = await asyncio.to_thread(
        cli, system, "submit", "--webhook-url", "http://x/", "--prompt", "x", "--mode", "later"
    )

    assert result.returncode == 2  # a usage error, as for any option's bad value
    assert "'later' is not one of 'callback'" in result.stderr
    assert "'sync'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "no-such-task"), "no task with id"),
        (("callback", "no-such-correlation", "success"), "unknown correlation id"),
    ],
)
async def test_errors_are_one_clear_line(
    system: RunningSystem, args: tuple[str, ...], message: str
) -> None:
    result = await asyncio.to_thread(cli, system, *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("submit", "--webhook-url", "not a url", "--prompt", "x"),
            "--webhook-url: must be an absolute",
        ),
        (("submit", "--webhook-url", "http://x/", "--prompt", "x", "--param", "oops"), "KEY=VALUE"),
    ],
)
async def test_a_value_an_option_cannot_take_is_a_usage_error(
    system: RunningSystem, args: tuple[str, ...], message: str
) -> None:
    result = await asyncio.to_thread(cli, system, *args)

    assert result.returncode == 2  # as for any option's bad value
    assert result.stderr.startswith("Usage: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_unreachable_broker_is_one_clear_line(system: RunningSystem) -> None:
    env = {**system.env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "webhook_tasks_cli",
            "submit",
            "--webhook-url",
            "http://x/",
            "--prompt",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "cannot reach Kafka" in result.stderr
    assert "Traceback" not in result.stderr
