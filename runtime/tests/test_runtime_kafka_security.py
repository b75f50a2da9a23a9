"""Kafka over TLS and SASL: settings that say how, and clients that connect that way."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faststream.security import SASLPlaintext, SASLScram512
from pydantic import BaseModel, TypeAdapter, ValidationError
from webhook_tasks_contracts import Topics
from webhook_tasks_runtime.catch_up import GroupCatchUp
from webhook_tasks_runtime.kafka import (
    ConsumerSpec,
    KafkaPublisher,
    OutgoingMessage,
    create_broker,
    ensure_topics,
    register_consumer,
)
from webhook_tasks_runtime.kafka_security import KafkaSecuritySettings
from webhook_tasks_runtime.pytest_plugin import TlsKafka

PASSWORD = "pw-9f8e7d6c5b4a"


def settings(**values: object) -> KafkaSecuritySettings:
    return KafkaSecuritySettings.model_validate(values)


def test_plain_text_adds_nothing() -> None:
    plain = settings()

    assert plain.kafka_client_options() == {}
    assert plain.kafka_broker_security() is None


def test_sasl_over_tls_gives_every_client_the_mechanism_credentials_and_a_verifying_context(
    tls_ca_file: Path,
) -> None:
    scram = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_file=tls_ca_file,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=PASSWORD,
    )

    options = scram.kafka_client_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD,
    }
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    security = scram.kafka_broker_security()
    assert isinstance(security, SASLScram512)
    assert security.use_ssl
    assert (security.username, security.password) == ("svc", PASSWORD)


def test_sasl_in_plain_text_has_no_tls_context() -> None:
    plain = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc",
        kafka_sasl_password=PASSWORD,
    )

    assert "ssl_context" not in plain.kafka_client_options()
    security = plain.kafka_broker_security()
    assert isinstance(security, SASLPlaintext)
    assert not security.use_ssl


def test_the_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tls_ca_file: Path
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CA_FILE", str(tls_ca_file))
    monkeypatch.setenv("KAFKA_SSL_CHECK_HOSTNAME", "false")

    options = KafkaSecuritySettings().kafka_client_options()

    assert options["security_protocol"] == "SSL"
    assert not options["ssl_context"].check_hostname


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "SASL_SSL needs KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_sasl_username": "svc", "kafka_sasl_password": PASSWORD},
            "KAFKA_SASL_USERNAME is set, but KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "KAFKA_SSL_CA_FILE is set, but"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_file": "/key.pem"},
            "KAFKA_SSL_KEY_FILE is set without KAFKA_SSL_CERT_FILE",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_sasl_username": "svc",
                "kafka_sasl_password": PASSWORD,
            },
            "kafka_sasl_mechanism",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason_and_no_secret(
    values: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as refused:
        settings(**values)

    assert PASSWORD not in str(refused.value)


def test_an_empty_security_setting_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # As a Secret key left empty gives it: the example Secret's KAFKA_SASL_PASSWORD with
    # PLAINTEXT, the ConfigMap's default.
    for name in ("KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME", "KAFKA_SSL_CA_FILE"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", " ")

    read = KafkaSecuritySettings()

    assert read.kafka_sasl_password is None
    assert read.kafka_ssl_ca_file is None
    assert read.kafka_client_options() == {}


def test_an_empty_password_does_not_satisfy_sasl() -> None:
    with pytest.raises(ValidationError, match="SASL_SSL needs KAFKA_SASL_PASSWORD"):
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="svc",
            kafka_sasl_password="",
        )


def test_a_tls_file_that_cannot_be_used_is_named_when_the_settings_are_read(
    tmp_path: Path,
) -> None:
    not_pem = tmp_path / "client.pem"
    not_pem.write_text("not a certificate")

    with pytest.raises(ValidationError, match="KAFKA_SSL_CA_FILE cannot be used"):
        settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tmp_path / "none.pem")
    with pytest.raises(ValidationError, match="KAFKA_SSL_CERT_FILE") as refused:
        settings(
            kafka_security_protocol="SSL",
            kafka_ssl_cert_file=not_pem,
            kafka_ssl_key_password=PASSWORD,
        )
    assert PASSWORD not in str(refused.value)


@pytest.fixture
def tls_ca_file(tmp_path: Path) -> Path:
    import trustme

    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


class Ping(BaseModel):
    number: int


@pytest.mark.integration
async def test_every_client_of_a_service_works_through_a_tls_listener(
    tls_kafka: TlsKafka,
) -> None:
    security = settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tls_kafka.ca_file)
    options = security.kafka_client_options()
    topics = Topics(f"tls-{uuid.uuid4().hex[:8]}")
    topic = topics.task_requested
    group = f"{topics.prefix}.pings"
    await ensure_topics(tls_kafka.bootstrap_servers, [topic], client_options=options)
    publisher = KafkaPublisher.create(
        tls_kafka.bootstrap_servers, enable_idempotence=False, client_id="test", **options
    )
    await publisher.start()
    handled: list[Ping] = []

    async def handle(event: Ping) -> None:
        handled.append(event)

    broker = create_broker(
        tls_kafka.bootstrap_servers, client_id="test", security=security.kafka_broker_security()
    )
    register_consumer(
        broker,
        ConsumerSpec("pings", topic, group, TypeAdapter(Ping), handle),
        dead_letters=publisher,
        topics=topics,
        fetch_max_wait_ms=20,
    )
    catch_up = GroupCatchUp(
        tls_kafka.bootstrap_servers,
        topic=topic,
        group_id=group,
        client_id="test",
        timeout=30,
        client_options=options,
    )
    await catch_up.start()
    try:
        await broker.start()
        await publisher.publish(OutgoingMessage(topic, "k", b'{"number": 1}'))
        # Returns once the consumer has committed past the record: all of it over TLS.
        await asyncio.wait_for(catch_up.wait("k", time.time()), 30)
    finally:
        await catch_up.stop()
        await broker.stop()
        await publisher.stop()

    assert handled == [Ping(number=1)]


@pytest.mark.integration
async def test_a_tls_listener_refuses_plain_text_and_a_broker_nobody_vouches_for(
    tls_kafka: TlsKafka,
) -> None:
    system_trust = settings(kafka_security_protocol="SSL").kafka_client_options()
    for options in ({}, system_trust):
        await expect_refused(tls_kafka, options)

    # The same listener takes a client that verifies it by the CA.
    trusting = publisher_for(
        tls_kafka,
        settings(
            kafka_security_protocol="SSL", kafka_ssl_ca_file=tls_kafka.ca_file
        ).kafka_client_options(),
    )
    await asyncio.wait_for(trusting.start(), 20)
    await trusting.stop()


@pytest.mark.integration
async def test_a_listener_that_authenticates_clients_takes_the_configured_certificate(
    mtls_kafka: TlsKafka,
) -> None:
    trust = {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": mtls_kafka.ca_file}
    await expect_refused(mtls_kafka, settings(**trust).kafka_client_options())

    identified = publisher_for(
        mtls_kafka,
        settings(
            **trust,
            kafka_ssl_cert_file=mtls_kafka.client_cert_file,
            kafka_ssl_key_file=mtls_kafka.client_key_file,
        ).kafka_client_options(),
    )
    await asyncio.wait_for(identified.start(), 20)
    try:
        await identified.publish(OutgoingMessage(f"mtls-{uuid.uuid4().hex[:8]}", "k", b"{}"))
    finally:
        await identified.stop()


def publisher_for(kafka: TlsKafka, options: dict[str, Any]) -> KafkaPublisher:
    """Return a publisher of `kafka` connecting with `options`; refusals fail within 3 s."""
    return KafkaPublisher.create(
        kafka.bootstrap_servers,
        enable_idempotence=False,
        client_id="test",
        request_timeout_ms=3000,
        **options,
    )


async def expect_refused(kafka: TlsKafka, options: dict[str, Any]) -> None:
    """Assert that the listener of `kafka` refuses a client connecting with `options`."""
    publisher = publisher_for(kafka, options)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(publisher.start(), 20)
    await publisher.stop()
