"""`run()` as `webhook-tasks up` starts it: a child process configured by environment variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from webhook_tasks_contracts import TaskDispatched, TaskRef, Topics, utc_now
from webhook_tasks_runtime.infra import Infrastructure

pytestmark = pytest.mark.integration

GENEROUS_WAIT = 60.0


@pytest.fixture
async def expirer_process(
    infrastructure_env: dict[str, str], unique_schema: str, unique_topics: Topics
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        **infrastructure_env,
        "TOPIC_PREFIX": unique_topics.prefix,
        "DATABASE_SCHEMA": unique_schema,
        "LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from webhook_tasks_expirer.main import run; run()",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def next_log_line(process: asyncio.subprocess.Process, message: str) -> dict[str, Any]:
    """Return the first JSON log entry with `message`, skipping the others."""
    assert process.stderr is not None
    async with asyncio.timeout(GENEROUS_WAIT):
        while True:
            line = await process.stderr.readline()
            assert line, f"the process ended before logging {message!r}"
            try:
                entry: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. a Python warning printed before logging is configured
            if entry.get("message") == message:
                return entry


async def test_run_serves_from_the_environment_and_stops_on_sigterm(
    expirer_process: asyncio.subprocess.Process,
    infrastructure: Infrastructure,
    unique_topics: Topics,
) -> None:
    started = await next_log_line(expirer_process, "service started")
    assert started["service"] == "expirer"

    producer = AIOKafkaProducer(
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        enable_idempotence=infrastructure.supports_idempotent_producer,
    )
    await producer.start()
    try:
        overdue = TaskDispatched(
            correlation_id="corr-process",
            task=TaskRef(task_id="task-1", user_id="user-1", project_id="project-1"),
            deadline_at=utc_now() - timedelta(seconds=1),
            timeout_seconds=1,
            webhook_host="example.com",
        )
        await producer.send_and_wait(
            unique_topics.task_lifecycle,
            overdue.model_dump_json().encode(),
            key=b"corr-process",
        )
    finally:
        await producer.stop()
    reached = await next_log_line(expirer_process, "deadline reached")
    assert reached["correlation_id"] == "corr-process"

    expirer_process.send_signal(signal.SIGTERM)
    await next_log_line(expirer_process, "service stopped")
    assert await asyncio.wait_for(expirer_process.wait(), GENEROUS_WAIT) == 0
