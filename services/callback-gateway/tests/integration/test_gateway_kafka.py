"""The gateway served by uvicorn over TCP, publishing to a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from webhook_tasks_contracts import CallbackReceived, Topics
from webhook_tasks_gateway import GatewaySettings, serve
from webhook_tasks_runtime.embedded import EmbeddedKafka, free_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics
from webhook_tasks_runtime.kafka_security import KafkaSecuritySettings
from webhook_tasks_runtime.pytest_plugin import TlsKafka
from webhook_tasks_runtime.settings import KAFKA_MAX_MESSAGE_BYTES

pytestmark = pytest.mark.integration

WAIT_SECONDS = 30.0


def key_spec() -> str:
    return f"it:base64:{base64.b64encode(os.urandom(32)).decode()}"


def gateway_settings(bootstrap: str, topics: Topics, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_enable_idempotence": False,
        "callback_token_keys": key_spec(),
        "topic_prefix": topics.prefix,
        "gateway_port": free_port(),
        "environment": "test",
    }
    values.update(overrides)
    return GatewaySettings(**values)


@asynccontextmanager
async def running(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the gateway in this process; yield a client of it once it answers /healthz."""
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop))
    base_url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=20, trust_env=False) as http:
            await wait_for_status(http, "/healthz", 200)
            yield http
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def wait_for_status(
    http: httpx.AsyncClient, path: str, status: int, *, within: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if (await http.get(path)).status_code == status:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{path} never answered {status} within {within}s"
        await asyncio.sleep(0.1)


async def consume_until(
    bootstrap: str, topic: str, key: str, last: Callable[[CallbackReceived], bool]
) -> list[CallbackReceived]:
    """Return every event on `topic` keyed `key`, from the start up to the one `last` picks.

    One key is one partition, in the order produced: anything published before the
    last one is in the list.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-gateway-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[CallbackReceived] = []
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.key != key.encode():
                        continue
                    found.append(CallbackReceived.model_validate_json(record.value))
                    if last(found[-1]):
                        return found
    finally:
        await consumer.stop()
    raise AssertionError(f"the last message keyed {key!r} never came; saw {found}")


async def consume_one(
    bootstrap: str, topic: str, key: str, **client_options: Any
) -> tuple[bytes, bytes]:
    """Return (key, value) of the first message on `topic` keyed `key`, from the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-gateway-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.key == key.encode():
                        return record.key, record.value
    finally:
        await consumer.stop()
    raise AssertionError(f"no message keyed {key!r} on {topic} within {WAIT_SECONDS}s")


async def gateway_on(infrastructure: Infrastructure, topics: Topics) -> GatewaySettings:
    """Create the callbacks topic on the session's broker; return settings that publish to it."""
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [topics.callback_received])
    return gateway_settings(
        bootstrap, topics, kafka_enable_idempotence=infrastructure.supports_idempotent_producer
    )


def success_body(correlation_id: str) -> dict[str, Any]:
    return {
        "correlationId": correlation_id,
        "status": "success",
        "resultUrl": "https://cdn.example.com/video.mp4",
        "metadata": {"seconds": 20},
    }


async def test_accepted_callback_is_on_kafka_keyed_by_correlation_id(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    settings = await gateway_on(infrastructure, unique_topics)
    correlation_id = f"it-{uuid.uuid4()}"
    url = settings.callback_tokens().callback_url("", correlation_id)

    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        response = await http.post(
            url, json=success_body(correlation_id), headers={"webhook-id": "msg_it_1"}
        )

    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "correlationId": correlation_id}
    key, value = await consume_one(bootstrap, unique_topics.callback_received, correlation_id)
    event = CallbackReceived.model_validate_json(value)
    assert key.decode() == correlation_id
    assert event.correlation_id == correlation_id
    assert event.status == "success"
    assert event.result_url == "https://cdn.example.com/video.mp4"
    assert event.metadata == {"seconds": 20}
    assert event.delivery_id == "msg_it_1"


async def test_a_callback_is_accepted_onto_a_kafka_that_takes_only_tls(
    tls_kafka: TlsKafka, unique_topics: Topics
) -> None:
    tls = {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": tls_kafka.ca_file}
    options = KafkaSecuritySettings.model_validate(tls).kafka_client_options()
    await ensure_topics(
        tls_kafka.bootstrap_servers, [unique_topics.callback_received], client_options=options
    )
    settings = gateway_settings(tls_kafka.bootstrap_servers, unique_topics, **tls)
    correlation_id = f"it-{uuid.uuid4()}"
    url = settings.callback_tokens().callback_url("", correlation_id)

    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        response = await http.post(url, json=success_body(correlation_id))

    assert response.status_code == 202, response.text
    _, value = await consume_one(
        tls_kafka.bootstrap_servers, unique_topics.callback_received, correlation_id, **options
    )
    assert CallbackReceived.model_validate_json(value).correlation_id == correlation_id


async def test_a_body_just_under_the_default_limit_is_accepted_and_on_kafka(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    topic = unique_topics.callback_received
    # As deploy/kubernetes/topics.yaml configures it: a broker's default is 1 MiB per message.
    max_message = str(KAFKA_MAX_MESSAGE_BYTES)
    await ensure_topics(bootstrap, [topic], configs={"max.message.bytes": max_message})
    settings = gateway_settings(
        bootstrap,
        unique_topics,
        kafka_enable_idempotence=infrastructure.supports_idempotent_producer,
    )
    correlation_id = f"it-{uuid.uuid4()}"
    body = success_body(correlation_id)
    body["metadata"] = {"padding": ""}
    padding = settings.gateway_max_body_bytes - 100 - len(json.dumps(body).encode())
    body["metadata"]["padding"] = "x" * padding
    raw = json.dumps(body).encode()
    url = settings.callback_tokens().callback_url("", correlation_id)

    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        response = await http.post(url, content=raw, headers={"content-type": "application/json"})

    assert len(raw) == settings.gateway_max_body_bytes - 100
    assert response.status_code == 202, response.text
    _, value = await consume_one(bootstrap, topic, correlation_id)
    assert len(value) > 1024 * 1024, "the event is larger than Kafka's default limit"
    assert CallbackReceived.model_validate_json(value).metadata == {"padding": "x" * padding}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_callbacks_by_outcome_on_their_own_port(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.callback_received])
    metrics_port = free_port()
    settings = gateway_settings(
        bootstrap,
        unique_topics,
        gateway_metrics_host="127.0.0.1",
        gateway_metrics_port=metrics_port,
    )
    correlation_id = f"it-{uuid.uuid4()}"
    url = settings.callback_tokens().callback_url("", correlation_id)
    callbacks, publishes = (
        "webhook_tasks_gateway_callbacks_total",
        "webhook_tasks_gateway_publish_seconds_count",
    )
    accepted = sample(callbacks, outcome="accepted")
    forged = sample(callbacks, outcome="invalid-callback-token")
    published = sample(publishes)

    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        assert (await http.post(url, json=success_body(correlation_id))).status_code == 202
        forgery = url.rsplit("/", 1)[0] + "/k.forged"
        assert (await http.post(forgery, json=success_body(correlation_id))).status_code == 401
        public = await http.get("/metrics")
        async with httpx.AsyncClient(trust_env=False) as internal:
            scraped = await internal.get(f"http://127.0.0.1:{metrics_port}/metrics")

    assert public.status_code == 404, "metrics are never served on the public port"
    assert scraped.status_code == 200
    assert "webhook_tasks_gateway_callbacks_total" in scraped.text
    assert sample(callbacks, outcome="accepted") == accepted + 1
    assert sample(callbacks, outcome="invalid-callback-token") == forged + 1
    assert sample(publishes) == published + 1


async def statuses_by_forwarded_client(
    settings: GatewaySettings, forwarded_for: list[str]
) -> list[int]:
    """POST one callback per X-Forwarded-For value from 127.0.0.1; return the statuses."""
    correlation_id = f"it-{uuid.uuid4()}"
    url = settings.callback_tokens().callback_url("", correlation_id)
    statuses = []
    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        for client in forwarded_for:
            answer = await http.post(
                url, json=success_body(correlation_id), headers={"x-forwarded-for": client}
            )
            statuses.append(answer.status_code)
    return statuses


def limited_per_client(bootstrap: str, topics: Topics, **overrides: Any) -> GatewaySettings:
    return gateway_settings(
        bootstrap,
        topics,
        gateway_rate_limit_per_client=0.01,
        gateway_rate_limit_per_client_burst=1,
        **overrides,
    )


async def test_a_forwarded_address_from_an_untrusted_peer_does_not_evade_the_client_limit(
    infrastructure: Infrastructure, unique_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.callback_received])
    settings = limited_per_client(bootstrap, unique_topics)

    with caplog.at_level(logging.INFO, logger="webhook_tasks_gateway"):
        statuses = await statuses_by_forwarded_client(settings, ["203.0.113.7", "198.51.100.9"])

    assert statuses == [202, 429], "by default no peer may name another client"
    refusals = [record for record in caplog.records if record.getMessage() == "callback refused"]
    assert [getattr(record, "client", None) for record in refusals] == ["127.0.0.1"]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(
    infrastructure: Infrastructure, unique_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = infrastructure.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.callback_received])
    settings = limited_per_client(bootstrap, unique_topics, gateway_trusted_proxies="127.0.0.0/8")

    with caplog.at_level(logging.INFO, logger="webhook_tasks_gateway"):
        statuses = await statuses_by_forwarded_client(
            settings,
            # The proxy appends the address it saw; a client may send anything before it.
            ["203.0.113.7", "198.51.100.9", "10.9.9.9, 203.0.113.7"],
        )

    assert statuses == [202, 202, 429]
    refusals = [record for record in caplog.records if record.getMessage() == "callback refused"]
    assert [getattr(record, "client", None) for record in refusals] == ["203.0.113.7"]


async def test_gateway_started_without_kafka_answers_503_then_recovers_without_restart(
    unique_topics: Topics,
) -> None:
    port = free_port()
    kafka = EmbeddedKafka(port=port)
    bootstrap = f"127.0.0.1:{port}"
    settings = gateway_settings(bootstrap, unique_topics, gateway_kafka_retry_max_seconds=0.5)
    correlation_id = f"it-{uuid.uuid4()}"
    url = settings.callback_tokens().callback_url("", correlation_id)
    try:
        async with running(settings) as http:
            not_ready = await http.get("/readyz")
            refused = await http.post(
                url, json=success_body(correlation_id), headers={"webhook-id": "refused"}
            )

            await asyncio.to_thread(kafka.start)
            await wait_for_status(http, "/readyz", 200)
            accepted = await http.post(
                url, json=success_body(correlation_id), headers={"webhook-id": "accepted"}
            )

        assert not_ready.status_code == 503
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.headers["content-type"] == "application/problem+json"
        assert accepted.status_code == 202, accepted.text
        # The 202 is in Kafka; the 503 before it, in the same partition, is not.
        on_kafka = await consume_until(
            bootstrap,
            unique_topics.callback_received,
            correlation_id,
            lambda event: event.delivery_id == "accepted",
        )
        assert [event.delivery_id for event in on_kafka] == ["accepted"]
    finally:
        await asyncio.to_thread(kafka.stop)


async def test_readyz_turns_503_soon_after_kafka_goes_away_though_no_callback_came(
    unique_topics: Topics,
) -> None:
    # A broker of its own: the session's shared one must stay up for the other tests.
    kafka = EmbeddedKafka(port=free_port())
    bootstrap = await asyncio.to_thread(kafka.start)
    settings = gateway_settings(bootstrap, unique_topics, gateway_kafka_retry_max_seconds=0.5)
    try:
        async with running(settings) as http:
            await wait_for_status(http, "/readyz", 200)

            await asyncio.to_thread(kafka.stop)
            await wait_for_status(http, "/readyz", 503, within=10)

            await asyncio.to_thread(kafka.start)
            await wait_for_status(http, "/readyz", 200, within=10)
    finally:
        await asyncio.to_thread(kafka.stop)


async def test_run_serves_from_the_environment_and_stops_cleanly_on_sigterm(
    infrastructure_env: dict[str, str], unique_topics: Topics
) -> None:
    port = free_port()
    keys = key_spec()
    env = {
        **os.environ,
        **infrastructure_env,
        "CALLBACK_TOKEN_KEYS": keys,
        "TOPIC_PREFIX": unique_topics.prefix,
        "GATEWAY_PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",  # the accepted callback's line is at DEBUG
    }
    settings = GatewaySettings(
        kafka_bootstrap_servers="unused:9092", callback_token_keys=keys, topic_prefix="x"
    )
    correlation_id = f"it-{uuid.uuid4()}"
    token = settings.callback_tokens().mint(correlation_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhook_tasks_gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=20, trust_env=False
        ) as http:
            await wait_for_status(http, "/readyz", 200)
            url = settings.callback_tokens().callback_url("", correlation_id)
            response = await http.post(url, json=success_body(correlation_id))
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert response.status_code == 202
    assert process.returncode == 0
    entries = [json.loads(line) for line in stderr.decode().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert f"callback gateway listening on http://127.0.0.1:{port}" in messages
    assert "callback accepted" in messages
    assert "connected to Kafka" in messages
    assert {entry["service"] for entry in entries} == {"callback-gateway"}
    assert token.partition(".")[2] not in stderr.decode()


async def test_pipelined_requests_get_whole_answers_in_order_then_the_close(
    infrastructure: Infrastructure, unique_topics: Topics
) -> None:
    settings = await gateway_on(infrastructure, unique_topics)
    correlation_id = f"it-{uuid.uuid4()}"
    body = json.dumps(success_body(correlation_id)).encode()
    path = settings.callback_tokens().callback_url("", correlation_id)
    requests = (
        b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
        + b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n" % path.encode()
        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
    )

    async with running(settings) as http:
        await wait_for_status(http, "/readyz", 200)
        reader, writer = await asyncio.open_connection(settings.gateway_host, settings.gateway_port)
        writer.write(requests)  # all three in one segment: HTTP/1.1 pipelining
        answers = await asyncio.wait_for(reader.read(), WAIT_SECONDS)  # to the server's close
        writer.close()

    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"200", b"202", b"200"], answers
    assert answers.endswith(b'{"status":"ok"}')
    assert b'{"status":"accepted","correlationId":"%s"}' % correlation_id.encode() in answers
