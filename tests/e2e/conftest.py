"""One running system (the four services and the demo external service) for all e2e tests."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from webhook_tasks_cli.config import StackConfig
from webhook_tasks_cli.operations import TaskReport, inspect_tasks
from webhook_tasks_cli.stack import Stack, StackOptions
from webhook_tasks_contracts import CallbackTokens, Topics, parse_callback_keys
from webhook_tasks_runtime.embedded import EmbeddedPostgres, free_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics

T = TypeVar("T")

SIGNED_ENDPOINT = "e2e-signed"
SIGNED_ENDPOINT_SECRET = "whsec_" + base64.b64encode(b"e2e endpoint signing secret!").decode()


@dataclass
class RunningSystem:
    """The stack under test and what a test needs to talk to it."""

    stack: Stack
    config: StackConfig
    topics: Topics
    demo_url: str
    tokens: CallbackTokens

    @property
    def env(self) -> dict[str, str]:
        """Return the environment that points the CLI at this system."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.config.kafka_bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": str(self.config.kafka_enable_idempotence).lower(),
            "DATABASE_URL": self.config.database_url or "",
            "PUBLIC_CALLBACK_BASE_URL": self.config.gateway_url or "",
            "CALLBACK_TOKEN_KEYS": self.config.callback_token_keys or "",
            "TOPIC_PREFIX": self.topics.prefix,
        }

    async def reports(self, task_id: str) -> list[TaskReport]:
        """Return what `show` would print about a task."""
        assert self.config.database_url
        return await inspect_tasks(self.config.database_url, task_id)


@pytest.fixture(scope="session")
def system(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """Start the four services and the demo external service once for the session."""
    with running_system(
        infrastructure, infrastructure.database_url, Path(tmp_path_factory.mktemp("e2e-logs"))
    ) as running:
        yield running


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server of the test module's own, and its URL: for tests that stop it, or
    that run a second system (whose services would share the first's schemas)."""
    postgres = EmbeddedPostgres()
    try:
        yield postgres, postgres.start()
    finally:
        postgres.stop()


@contextmanager
def running_system(
    infrastructure: Infrastructure,
    database_url: str,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningSystem]:
    """Run the four services and the demo service on `database_url` and topics of their own."""
    topics = Topics(f"e2e-{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(infrastructure.kafka_bootstrap_servers, topics.all()))
    keys = f"e2e:base64:{base64.b64encode(secrets.token_bytes(32)).decode()}"
    options = StackOptions(
        database_url=database_url,
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
        kafka_fetch_max_wait_ms=infrastructure.fetch_max_wait_ms,
        callback_token_keys=keys,
        gateway_port=free_port(),
        log_dir=log_dir,
        topic_prefix=topics.prefix,
        extra_env={
            "SCAN_POLL_INTERVAL": "0.1",
            "GATEWAY_SIGNING_SECRETS": f"{SIGNED_ENDPOINT}:{SIGNED_ENDPOINT_SECRET}",
            **(extra_env or {}),
        },
    )
    stack = Stack(options)
    try:
        stack.start()
        demo_url = stack.start_demo_service(free_port())
        yield RunningSystem(
            stack=stack,
            config=StackConfig(
                kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
                database_url=database_url,
                gateway_url=options.gateway_url,
                callback_token_keys=keys,
                topic_prefix=topics.prefix,
                kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
            ),
            topics=topics,
            demo_url=demo_url,
            tokens=CallbackTokens(parse_callback_keys(keys)),
        )
    finally:
        stack.stop()
        for log in sorted(options.log_dir.glob("*.log")):
            # Kept in the test output when something failed, to show what each service said.
            print(f"----- {log.name} (last lines) -----")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within: float = 60.0,
    what: str = "condition",
    interval: float = 0.2,
) -> T:
    """Poll `probe` until `accept` holds for its value and return that value.

    After `within` seconds, fail saying `what` was awaited and showing the last value.
    """
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not met within {within:.0f}s; last value: {value!r}")
        await asyncio.sleep(interval)


def unique_task_id(label: str) -> str:
    """Return a task id no other test uses."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


def finished(reports: list[TaskReport]) -> bool:
    """Return whether the single run of a task has ended and its comment is written."""
    return (
        len(reports) == 1
        and reports[0].task.status.value in ("completed", "failed", "expired")
        and any(comment.kind != "progress" for comment in reports[0].comments)
    )


def terminal_comments(report: TaskReport) -> list[Any]:
    """Return the task's comments other than progress: its outcome, and a late result if any."""
    return [comment for comment in report.comments if comment.kind != "progress"]
