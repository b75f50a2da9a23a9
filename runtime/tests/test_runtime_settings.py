"""Settings refuse at start-up what would fail later, and their errors never quote a secret."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from webhook_tasks_runtime.settings import KAFKA_MAX_MESSAGE_BYTES, DatabaseSettings


def settings(**values: Any) -> DatabaseSettings:
    return DatabaseSettings(
        kafka_bootstrap_servers="kafka:9092", database_schema="expirer", **values
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://expirer:secret@db.internal:5432/tasks",
        "postgres://db.internal/tasks",
        "postgresql://expirer:Zk3%2Fq9%23Lm%40x%3F@db.internal:5432/tasks",
        "postgresql://expirer:p4ss:with:colons@db.internal/tasks",
        "postgresql://expirer:secret@db-1:5432,db-2:5433/tasks?target_session_attrs=read-write",
        "postgresql://expirer:secret@[::1]:5432/tasks",
        "postgresql://expirer:secret@db.internal/tasks?sslmode=verify-full&application_name=x",
        # The embedded server's: a Unix socket, no host, an empty password.
        "postgresql://postgres:@/postgres?host=/tmp/webhook-tasks-pg-x/pgdata",
        "postgresql://expirer@/tasks?host=/var/run/postgresql",
        "postgresql:///tasks",
    ],
)
def test_urls_asyncpg_reads_are_accepted(url: str) -> None:
    assert settings(database_url=url).database_url.get_secret_value() == url


@pytest.mark.parametrize(
    ("url", "secret_parts"),
    [
        # Unencoded / # ? or @ in the password: asyncpg would quote a piece of it.
        ("postgresql://expirer:Zk3/q9#Lm@db.internal:5432/tasks", ["Zk3", "q9", "Lm"]),
        ("postgresql://expirer:Zk3q9?Lm@db.internal:5432/tasks", ["Zk3q9", "Lm"]),
        ("postgresql://expirer:Zk3@q9Lm@db.internal:5432/tasks", ["Zk3", "q9Lm"]),
        ("postgresql://expirer:123/456@db.internal/tasks", ["123", "456"]),
        ("postgresql://expirer:123?a=b@db.internal/tasks", ["123", "a=b"]),
        ("postgresql://expirer:Zk3q9Lm@db.internal:port/tasks", ["Zk3q9Lm"]),
        ("mysql://expirer:Zk3q9Lm@db.internal/tasks", ["Zk3q9Lm"]),
        ("db.internal:5432", ["db.internal"]),
    ],
)
def test_a_url_asyncpg_cannot_read_is_refused_without_quoting_it(
    url: str, secret_parts: list[str]
) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(database_url=url)

    message = str(refused.value)
    assert "DATABASE_URL" in message
    assert "percent-encode" in message
    for part in secret_parts:
        assert part not in message


def test_the_producer_takes_an_event_carrying_the_largest_callback_by_default() -> None:
    assert settings(database_url="postgresql:///tasks").kafka_max_message_bytes == (
        KAFKA_MAX_MESSAGE_BYTES
    )
    assert KAFKA_MAX_MESSAGE_BYTES == 1_179_648


def test_the_largest_message_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_MAX_MESSAGE_BYTES", "2097152")

    assert settings(database_url="postgresql:///tasks").kafka_max_message_bytes == 2 * 2**20
