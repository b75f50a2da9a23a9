"""A stack records how its Kafka is reached, so commands in another shell connect alike."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from webhook_tasks_cli.config import (
    ConfigurationError,
    StackConfig,
    kafka_client_options,
    kafka_config,
    kafka_security_from_env,
    write_stack_file,
)
from webhook_tasks_contracts import TaskRequested, Topics
from webhook_tasks_runtime.kafka import ensure_topics
from webhook_tasks_runtime.pytest_plugin import TlsKafka

from .conftest import run
from .test_cli_errors import PASSWORD, SUBMIT

_SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "svc",
    "kafka_sasl_password": PASSWORD,
}


@pytest.fixture
def stack_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stack.json"
    monkeypatch.setenv("WEBHOOK_TASKS_STACK_FILE", str(path))
    for name in [*os.environ]:
        if name.upper().startswith("KAFKA_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    return path


def test_only_the_kafka_security_settings_are_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, stack_file: Path
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("kafka_ssl_ca_file", "/etc/ca.pem")  # as case-blind as the services
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("KAFKA_SSL_UNKNOWN", "x")

    assert kafka_security_from_env() == {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_ca_file": "/etc/ca.pem",
    }


def test_a_command_without_kafka_settings_connects_as_the_stack_it_finds(
    stack_file: Path,
) -> None:
    write_stack_file(
        StackConfig(kafka_bootstrap_servers="kafka:9093", pid=os.getpid(), kafka_security=_SASL)
    )

    options = kafka_client_options(kafka_config().kafka_security)

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == PASSWORD
    assert stack_file.stat().st_mode & 0o077 == 0


def test_the_shell_s_own_settings_do_not_mix_into_the_stack_s(
    monkeypatch: pytest.MonkeyPatch, stack_file: Path
) -> None:
    monkeypatch.setenv("KAFKA_SSL_CA_FILE", "/nonexistent/ca.pem")
    write_stack_file(StackConfig(kafka_bootstrap_servers="kafka:9092", pid=os.getpid()))

    assert kafka_client_options(kafka_config().kafka_security) == {}


def test_stack_settings_that_cannot_work_are_one_line_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        kafka_client_options({**_SASL, "kafka_sasl_mechanism": "GSSAPI"})

    assert str(raised.value).startswith("KAFKA_SASL_MECHANISM: Input should be")
    assert PASSWORD not in str(raised.value)


@pytest.mark.integration
async def test_submit_in_another_shell_reaches_a_tls_only_kafka_through_the_stack_file(
    tls_kafka: TlsKafka, stack_file: Path
) -> None:
    security = {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": str(tls_kafka.ca_file)}
    options = kafka_client_options(security)
    topics = Topics(f"cli-tls-{uuid.uuid4().hex[:8]}")
    await ensure_topics(
        tls_kafka.bootstrap_servers, [topics.task_requested], client_options=options
    )
    write_stack_file(
        StackConfig(
            kafka_bootstrap_servers=tls_kafka.bootstrap_servers,
            topic_prefix=topics.prefix,
            kafka_enable_idempotence=False,
            pid=os.getpid(),
            kafka_security=security,
        )
    )

    # In a thread: the TLS listener runs on this test's event loop.
    done = await asyncio.to_thread(run, *SUBMIT)

    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    consumer = AIOKafkaConsumer(
        topics.task_requested,
        bootstrap_servers=tls_kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        **options,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert TaskRequested.model_validate_json(record.value or b"").task_id == task_id
