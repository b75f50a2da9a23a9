"""`webhook-tasks up` given a PostgreSQL or Kafka it cannot use: one line, nothing started."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from webhook_tasks_runtime.embedded import EmbeddedKafka, free_port

from .conftest import run

PASSWORD = "hunter2-secret"


def up(state: Path, **env: str) -> tuple[int, str]:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "up",
        "--gateway-port",
        str(free_port()),
        XDG_STATE_HOME=str(state),
        **env,
    )
    return done.returncode, done.stderr


def test_up_with_an_unreachable_kafka_says_so_in_one_line(tmp_path: Path) -> None:
    code, errors = up(
        tmp_path,
        DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:1/db",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )

    assert code == 1
    assert errors.startswith("error: cannot reach Kafka at 127.0.0.1:"), errors
    assert len(errors.strip().splitlines()) == 1, errors
    assert PASSWORD not in errors
    assert not (tmp_path / "webhook-tasks" / "logs").exists(), "no service was started"


@pytest.mark.integration
async def test_up_with_an_unreachable_database_says_so_before_starting_services(
    private_kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    code, errors = await asyncio.to_thread(
        up,
        tmp_path,
        DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:1/db",
        KAFKA_BOOTSTRAP_SERVERS=private_kafka.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
    )

    assert code == 1
    assert errors.strip() == "error: cannot reach PostgreSQL: ConnectionRefusedError"
    assert not (tmp_path / "webhook-tasks" / "logs").exists(), "no service was started"
