"""Bad configuration is one line on stderr and a non-zero exit, never a traceback or a secret."""

from __future__ import annotations

import pytest

from .conftest import run

PASSWORD = "Zk3/q9#Lm"


@pytest.mark.parametrize("url", [f"postgresql://u:{PASSWORD}@db.internal:5432/tasks", "notaurl"])
def test_an_unusable_database_url_is_one_line_without_the_password(url: str) -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "show",
        "x",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        DATABASE_URL=url,
    )

    assert done.returncode == 1
    assert done.stderr.startswith("error: DATABASE_URL is not a PostgreSQL URL")
    assert "Traceback" not in done.stderr
    assert "Zk3" not in done.stderr + done.stdout


def test_an_unusable_kafka_address_is_one_line() -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "submit",
        "--webhook-url",
        "https://svc.example/",
        "--prompt",
        "a video",
        KAFKA_BOOTSTRAP_SERVERS="host:abc",
    )

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port], not 'host:abc'"
    )


@pytest.mark.parametrize(
    "module",
    [
        "webhook_tasks_dispatcher",
        "webhook_tasks_gateway",
        "webhook_tasks_expirer",
        "webhook_tasks_notifier",
    ],
)
def test_a_service_run_as_a_program_reports_missing_settings_in_one_line(module: str) -> None:
    done = run("-m", module)

    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid settings: ")
    assert "KAFKA_BOOTSTRAP_SERVERS: Field required" in done.stderr
    assert "Traceback" not in done.stderr
