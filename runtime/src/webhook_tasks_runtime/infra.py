"""Find PostgreSQL and Kafka for a run: environment first, then Docker, then embedded servers."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .embedded import EmbeddedKafka, EmbeddedPostgres

logger = logging.getLogger(__name__)

Source = Literal["environment", "testcontainers", "embedded"]


@dataclass
class Infrastructure:
    """A database URL and a broker address, with whatever must be stopped afterwards."""

    database_url: str
    kafka_bootstrap_servers: str
    source: Source
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def supports_idempotent_producer(self) -> bool:
        """Return whether the broker can do InitProducerId (the embedded one cannot)."""
        return self.source != "embedded"

    @property
    def fetch_max_wait_ms(self) -> int:
        """Return a fetch wait that suits the broker: the embedded one always waits it out."""
        return 20 if self.source == "embedded" else 500

    def close(self) -> None:
        """Stop everything this object started, newest first."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:
                logger.exception("failed to stop infrastructure")


def start_infrastructure(*, allow_docker: bool = True) -> Infrastructure:
    """Use DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS when both are set; else start servers."""
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if database_url and bootstrap:
        return Infrastructure(database_url, bootstrap, "environment")
    if allow_docker and docker_engine_reachable():
        return _start_testcontainers()
    return start_embedded()


def start_embedded() -> Infrastructure:
    """Start the embedded PostgreSQL and broker."""
    postgres = EmbeddedPostgres()
    kafka = EmbeddedKafka()
    infra = Infrastructure("", "", "embedded")
    try:
        infra.database_url = postgres.start()
        infra._closers.append(postgres.stop)
        infra.kafka_bootstrap_servers = kafka.start()
        infra._closers.append(kafka.stop)
    except BaseException:
        infra.close()
        raise
    return infra


def docker_engine_reachable() -> bool:
    """Return whether a Docker engine answers (a docker client alone is not enough)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


def _start_testcontainers() -> Infrastructure:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    postgres = PostgresContainer("postgres:16-alpine", driver=None)
    kafka = KafkaContainer("confluentinc/cp-kafka:7.6.0")
    infra = Infrastructure("", "", "testcontainers")
    try:
        postgres.start()
        infra._closers.append(postgres.stop)
        kafka.start()
        infra._closers.append(kafka.stop)
        infra.database_url = postgres.get_connection_url()
        infra.kafka_bootstrap_servers = kafka.get_bootstrap_server()
    except BaseException:
        infra.close()
        raise
    return infra
