"""Pytest fixtures for tests that need real infrastructure.

`infrastructure` is started once per test session: DATABASE_URL and
KAFKA_BOOTSTRAP_SERVERS when set, else testcontainers when a Docker engine
answers, else the embedded PostgreSQL and broker. Tests get unique topics and
schemas so they never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from webhook_tasks_contracts import Topics

from .infra import Infrastructure, start_infrastructure


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    """Start (or find) PostgreSQL and a Kafka-protocol broker for the whole session."""
    infra = start_infrastructure()
    try:
        yield infra
    finally:
        infra.close()


@pytest.fixture
def unique_topics() -> Topics:
    """Return topic names no other test uses."""
    return Topics(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def unique_schema() -> str:
    """Return a PostgreSQL schema name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def infrastructure_env(infrastructure: Infrastructure) -> dict[str, str]:
    """Return the environment variables that point a service at the test infrastructure."""
    return {
        "DATABASE_URL": infrastructure.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.kafka_bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": str(infrastructure.supports_idempotent_producer).lower(),
        "KAFKA_FETCH_MAX_WAIT_MS": str(infrastructure.fetch_max_wait_ms),
        "ENVIRONMENT": "test",
    }
