"""Helpers for the e2e tests that push hundreds of tasks through the running system at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import BaseModel, TypeAdapter, ValidationError
from webhook_tasks_contracts import REVEAL_SECRETS, TaskMetadata, TaskRequested

from .conftest import RunningSystem, wait_until

ModelT = TypeVar("ModelT", bound=BaseModel)

USER = "burst-user"
FOLLOWER = "burst-follower"
TERMINAL_STATES = ("completed", "failed", "expired")


def burst_requests(
    system: RunningSystem, label: str, count: int, *, timeouts: Sequence[int], outcome: str
) -> list[TaskRequested]:
    """Return `count` new demo-service tasks, their timeouts taken from `timeouts` in turn."""
    run = uuid.uuid4().hex[:8]
    return [
        TaskRequested(
            task_id=f"{label}-{run}-{index:05d}",
            user_id=USER,
            project_id="burst-project",
            prompt="one of many",
            followers=[FOLLOWER],
            task_metadata=TaskMetadata(
                is_webhook_task=True,
                webhook_url=f"{system.demo_url}/generate-video",
                webhook_params={"outcome": outcome},
                timeout_seconds=timeouts[index % len(timeouts)],
            ),
        )
        for index in range(count)
    ]


async def publish_all(system: RunningSystem, requests: Iterable[TaskRequested]) -> None:
    """Publish task events through one producer, as a busy upstream system would."""
    producer = AIOKafkaProducer(
        bootstrap_servers=system.config.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=system.config.kafka_enable_idempotence,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                system.topics.task_requested,
                request.model_dump_json(context={REVEAL_SECRETS: True}).encode(),
                key=request.task_id.encode(),
            )
            for request in requests
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class TaskState:
    """What the dispatcher's table says about one task."""

    task_id: str
    correlation_id: str
    status: str
    deadline_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    """Everything the system recorded about one task's end."""

    state: TaskState
    terminal_comment_kinds: list[str]
    notified_users: list[str]
    applied: list[str]
    late_results: int = 0
    """Comments showing a result that arrived after the task expired (never an outcome)."""


async def connect(system: RunningSystem) -> asyncpg.Connection:
    """Open a connection to the system's database."""
    assert system.config.database_url
    return await asyncpg.connect(system.config.database_url)


async def task_states(conn: asyncpg.Connection, task_ids: Sequence[str]) -> list[TaskState]:
    """Return the dispatcher's rows for these tasks."""
    rows = await conn.fetch(
        "SELECT task_id, correlation_id, status, deadline_at, finished_at"
        " FROM dispatcher.tasks WHERE task_id = ANY($1::text[])",
        list(task_ids),
    )
    return [TaskState(**dict(row)) for row in rows]


async def every_task_dispatched(
    conn: asyncpg.Connection, task_ids: Sequence[str]
) -> list[TaskState]:
    """Wait until every task was sent and accepted (it has a deadline); return their rows."""
    return await wait_until(
        lambda: task_states(conn, task_ids),
        lambda rows: len(rows) == len(task_ids) and all(r.deadline_at is not None for r in rows),
        within=60,
        what="every task dispatched",
        interval=0.1,
    )


async def count_terminal_comments(conn: asyncpg.Connection, correlation_ids: Sequence[str]) -> int:
    """Return how many terminal comments the notifier wrote on these tasks."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM notifier.comments"
        " WHERE correlation_id = ANY($1::text[]) AND kind NOT IN ('progress', 'late_result')",
        list(correlation_ids),
    )
    return value


async def count_deadlines(conn: asyncpg.Connection, correlation_ids: Sequence[str]) -> int:
    """Return how many of these tasks have a pending deadline in the expirer."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM expirer.deadlines WHERE correlation_id = ANY($1::text[])",
        list(correlation_ids),
    )
    return value


async def outcomes(conn: asyncpg.Connection, task_ids: Sequence[str]) -> dict[str, Outcome]:
    """Return, per correlation id, the task's state, terminal comments, notices and history."""
    states = await task_states(conn, task_ids)
    ids = [state.correlation_id for state in states]
    comments: defaultdict[str, list[str]] = defaultdict(list)
    late: defaultdict[str, int] = defaultdict(int)
    for row in await conn.fetch(
        "SELECT correlation_id, kind FROM notifier.comments"
        " WHERE correlation_id = ANY($1::text[]) AND kind <> 'progress' ORDER BY id",
        ids,
    ):
        if row["kind"] == "late_result":
            late[row["correlation_id"]] += 1
        else:
            comments[row["correlation_id"]].append(row["kind"])
    notified: defaultdict[str, list[str]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT correlation_id, user_id FROM notifier.notifications"
        " WHERE correlation_id = ANY($1::text[]) AND kind <> 'late_result' ORDER BY id",
        ids,
    ):
        notified[row["correlation_id"]].append(row["user_id"])
    applied: defaultdict[str, list[str]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT correlation_id, kind FROM dispatcher.task_history"
        " WHERE correlation_id = ANY($1::text[]) AND outcome = 'applied' ORDER BY seq",
        ids,
    ):
        applied[row["correlation_id"]].append(row["kind"])
    return {
        state.correlation_id: Outcome(
            state,
            comments[state.correlation_id],
            sorted(notified[state.correlation_id]),
            applied[state.correlation_id],
            late[state.correlation_id],
        )
        for state in states
    }


async def freeze_then_kill(system: RunningSystem, service: str) -> None:
    """Stop a service at once (SIGSTOP), then kill -9 it, so its state is caught mid-work."""
    os.kill(system.stack.pid(service), signal.SIGSTOP)
    system.stack.kill_service(service, signal.SIGKILL)


def ensure_running(system: RunningSystem, service: str) -> None:
    """Start `service` again if a failed test left it killed, so later tests have it."""
    try:
        system.stack.pid(service)
    except KeyError:
        system.stack.start_service(service)


async def post_success(
    session: aiohttp.ClientSession, system: RunningSystem, correlation_id: str
) -> int:
    """Send a success callback for a task as its external service would; return the status."""
    assert system.config.gateway_url
    url = system.tokens.callback_url(system.config.gateway_url, correlation_id)
    body = {
        "correlationId": correlation_id,
        "status": "success",
        "resultUrl": f"https://cdn.example.com/{correlation_id}.mp4",
        "metadata": {"title": "Burst"},
    }
    async with session.post(url, json=body) as response:
        await response.read()
        return response.status


def http_session() -> aiohttp.ClientSession:
    """Return a client able to send hundreds of callbacks at once on loopback."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200),
        timeout=aiohttp.ClientTimeout(total=30),
        trust_env=False,
    )


async def read_topic(
    system: RunningSystem,
    topic: str,
    adapter: TypeAdapter[Any],
    correlation_ids: set[str],
    *,
    done: Callable[[list[Any]], bool],
    within: float = 60.0,
) -> list[Any]:
    """Read `topic` from the start; return its events about these tasks once `done` holds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=system.config.kafka_bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, partition) for partition in partitions])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + within
        while not done(found):
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: only {len(found)} matching events within {within:.0f}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batches.values():
                for record in records:
                    try:
                        event = adapter.validate_json(record.value or b"")
                    except ValidationError:
                        continue
                    if getattr(event, "correlation_id", None) in correlation_ids:
                        found.append(event)
    finally:
        await consumer.stop()
    return found


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `values`."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def ended(system: RunningSystem, task_ids: Sequence[str]) -> tuple[dict[str, Outcome], float]:
    """Wait until every task has its terminal comment; return their outcomes a second later
    (time for a duplicate still in flight to land), and when the last one ended (monotonic)."""
    conn = await connect(system)
    try:
        await wait_until(
            lambda: outcomes(conn, task_ids),
            lambda found: (
                len(found) == len(task_ids)
                and all(outcome.terminal_comment_kinds for outcome in found.values())
            ),
            within=120,
            what="every task ended",
            interval=0.5,
        )
        ended_at = time.monotonic()
        await asyncio.sleep(1.0)
        return await outcomes(conn, task_ids), ended_at
    finally:
        await conn.close()


def assert_each_ended_once(
    found: dict[str, Outcome], count: int, status: str, comment_kind: str
) -> None:
    """Check `count` tasks: each in `status`, with one terminal comment, notice a user, outcome."""
    assert len(found) == count
    assert tally(outcome.state.status for outcome in found.values()) == {status: count}
    assert tally(tuple(outcome.terminal_comment_kinds) for outcome in found.values()) == {
        (comment_kind,): count
    }
    assert tally(tuple(outcome.notified_users) for outcome in found.values()) == {
        tuple(sorted((USER, FOLLOWER))): count
    }
    assert tally(len(outcome.applied) for outcome in found.values()) == {1: count}


def tally(values: Iterable[Any]) -> dict[Any, int]:
    """Return how often each value occurs."""
    return dict(Counter(values))


async def warm_up(system: RunningSystem) -> None:
    """Take one task to success and one to expiry, so every consumer group has joined."""
    requests = [
        *burst_requests(system, "warm-up-success", 1, timeouts=[60], outcome="success"),
        *burst_requests(system, "warm-up-expiry", 1, timeouts=[1], outcome="never"),
    ]
    requests[0] = requests[0].model_copy(
        update={
            "task_metadata": requests[0].task_metadata.model_copy(
                update={"webhook_params": {"outcome": "success", "delaySeconds": 0.1}}
            )
        }
    )
    task_ids = [request.task_id for request in requests]
    await publish_all(system, requests)
    conn = await connect(system)
    try:
        await wait_until(
            lambda: outcomes(conn, task_ids),
            lambda found: (
                len(found) == 2
                and all(len(outcome.terminal_comment_kinds) == 1 for outcome in found.values())
            ),
            within=90,
            what="the warm-up tasks finished",
            interval=0.2,
        )
    finally:
        await conn.close()
