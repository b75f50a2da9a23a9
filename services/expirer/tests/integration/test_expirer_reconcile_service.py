"""The running service sweeps: a task left open after its deadline fired is announced again."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from webhook_tasks_contracts import DeadlineReached, TaskDispatched, TaskRef, Topics, utc_now
from webhook_tasks_expirer.main import serve
from webhook_tasks_expirer.settings import ExpirerSettings
from webhook_tasks_runtime.infra import Infrastructure

pytestmark = pytest.mark.integration


async def test_a_stuck_task_is_announced_again_by_the_running_service(
    infrastructure: Infrastructure, unique_schema: str, unique_topics: Topics
) -> None:
    settings = ExpirerSettings(
        environment="test",
        database_url=infrastructure.database_url,
        database_schema=unique_schema,
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
        topic_prefix=unique_topics.prefix,
        reconcile_interval=0.2,
        reconcile_grace=1.0,
    )
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    reader = AIOKafkaConsumer(
        unique_topics.deadline_reached,
        bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        group_id=f"{unique_topics.prefix}.test-reader",
        auto_offset_reset="earliest",
    )
    await producer.start()
    await reader.start()
    announced: list[DeadlineReached] = []
    try:
        # Its deadline has passed and no terminal event will ever follow.
        stuck = TaskDispatched(
            correlation_id="stuck",
            task=TaskRef(task_id="task-stuck", user_id="user-1", project_id="project-1"),
            deadline_at=utc_now() - timedelta(seconds=1),
            timeout_seconds=1,
            webhook_host="example.com",
        )
        await producer.send_and_wait(
            unique_topics.task_lifecycle, stuck.model_dump_json().encode(), key=b"stuck"
        )
        give_up = time.monotonic() + 60
        while len(announced) < 2:
            assert not service.done(), "the expirer stopped"
            assert time.monotonic() < give_up, f"announced only {announced}"
            batches = await reader.getmany(timeout_ms=200)
            for records in batches.values():
                announced += [DeadlineReached.model_validate_json(r.value) for r in records]
    finally:
        await reader.stop()
        await producer.stop()
        stop.set()
        await asyncio.wait_for(service, timeout=30)

    first, again = announced[:2]
    assert (first.correlation_id, again.correlation_id) == ("stuck", "stuck")
    assert first.deadline_at == again.deadline_at == stuck.deadline_at
    assert first.event_id != again.event_id
    assert again.occurred_at - first.occurred_at >= timedelta(seconds=1)
