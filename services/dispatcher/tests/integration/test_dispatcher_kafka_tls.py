"""The real service on a broker reached only over TLS: it dispatches and applies callbacks."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from webhook_tasks_contracts import (
    CallbackReceived,
    Topics,
)
from webhook_tasks_dispatcher.main import serve
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics
from webhook_tasks_runtime.kafka_security import KafkaSecuritySettings
from webhook_tasks_runtime.pytest_plugin import TlsKafka

from .conftest import (
    GENEROUS_WAIT,
    LocalServer,
    accept,
    publish_task,
    settings_for,
    wait_until,
    webhook_task,
)

pytestmark = pytest.mark.integration


async def test_the_dispatcher_works_against_a_kafka_that_takes_only_tls(
    infrastructure: Infrastructure,
    tls_kafka: TlsKafka,
    unique_schema: str,
    unique_topics: Topics,
    server: LocalServer,
    pool: asyncpg.Pool,
) -> None:
    server.routes["/run"] = accept
    tls = {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": tls_kafka.ca_file}
    options = KafkaSecuritySettings.model_validate(tls).kafka_client_options()
    await ensure_topics(tls_kafka.bootstrap_servers, unique_topics.all(), client_options=options)
    settings = settings_for(
        infrastructure,
        unique_schema,
        unique_topics,
        kafka_bootstrap_servers=tls_kafka.bootstrap_servers,
        kafka_enable_idempotence=False,
        **tls,
    )
    request = webhook_task(f"{server.url}/run", prefix="tls")
    producer = AIOKafkaProducer(bootstrap_servers=tls_kafka.bootstrap_servers, **options)
    await producer.start()
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    try:
        await publish_task(producer, unique_topics, request)
        await wait_until(
            pool, "SELECT count(*) FROM tasks WHERE status = 'initiated'", bool, service
        )
        correlation_id = await pool.fetchval("SELECT correlation_id FROM tasks")
        success = CallbackReceived(
            correlation_id=correlation_id,
            status="success",
            result_url="https://results.example.com/r/1",
        )
        await producer.send_and_wait(
            unique_topics.callback_received,
            success.model_dump_json().encode(),
            key=correlation_id.encode(),
        )
        await wait_until(
            pool, "SELECT count(*) FROM tasks WHERE status = 'completed'", bool, service
        )
        # Its lifecycle events reach Kafka too: the relay publishes and deletes them.
        await wait_until(pool, "SELECT count(*) FROM outbox", lambda count: count == 0, service)
    finally:
        stop.set()
        await asyncio.wait_for(service, GENEROUS_WAIT)
        await producer.stop()

    assert [path for path, _, _ in server.received] == ["/run"]
