"""Pytest fixtures for tests that need real infrastructure.

`infrastructure` is started once per test session: DATABASE_URL and
KAFKA_BOOTSTRAP_SERVERS when set, else testcontainers when a Docker engine
answers, else the embedded PostgreSQL and broker. Tests get unique topics and
schemas so they never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from webhook_tasks_contracts import Topics

from .embedded import EmbeddedKafka, free_port
from .infra import Infrastructure, start_infrastructure
from .logging import configure_logging

_NOISY_LOGGERS = ("aiokafka", "faststream", "httpx", "httpcore", "uvicorn.access")
_RECORD_LOOKUPS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
"""What configure_logging turns off for the whole process, and a test must turn back on."""


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
async def private_kafka() -> AsyncIterator[EmbeddedKafka]:
    """Start a broker of the test's own, for a test that stops it: the session's must stay up."""
    kafka = EmbeddedKafka(port=free_port())
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)


@dataclass(frozen=True)
class TlsKafka:
    """A broker reached only through a TLS listener, and the CA file that verifies it."""

    bootstrap_servers: str
    ca_file: Path
    client_cert_file: Path | None = None
    """A certificate the listener takes from clients, where it asks for one."""
    client_key_file: Path | None = None


@pytest.fixture
async def tls_kafka(tmp_path: Path) -> AsyncIterator[TlsKafka]:
    """Start a broker of the test's own behind a TLS listener, as a cluster's TLS listener is."""
    async with _behind_tls(tmp_path, client_certificates=False) as kafka:
        yield kafka


@pytest.fixture
async def mtls_kafka(tmp_path: Path) -> AsyncIterator[TlsKafka]:
    """The same, with a listener that takes only clients with a certificate of its CA."""
    async with _behind_tls(tmp_path, client_certificates=True) as kafka:
        yield kafka


@asynccontextmanager
async def _behind_tls(tmp_path: Path, *, client_certificates: bool) -> AsyncIterator[TlsKafka]:
    import trustme  # a test tool: certificates of a CA made for the test

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "kafka-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    cert_file = key_file = None
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        authority.configure_trust(context)
        client = authority.issue_cert("webhook-tasks-client")
        cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
        client.cert_chain_pems[0].write_to_path(str(cert_file))
        client.private_key_pem.write_to_path(str(key_file))
    tls_port = free_port()
    kafka = EmbeddedKafka(port=free_port(), advertised_port=tls_port)
    await asyncio.to_thread(kafka.start)
    host, _, port = kafka.bootstrap_servers.rpartition(":")
    connections: set[asyncio.Task[None]] = set()

    async def forward(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        broker_reader, broker = await asyncio.open_connection(host, int(port))
        pipes = [
            asyncio.create_task(_pipe(client_reader, broker)),
            asyncio.create_task(_pipe(broker_reader, client)),
        ]
        connections.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        for writer in (client, broker):
            writer.close()

    listener = await asyncio.start_server(forward, "127.0.0.1", tls_port, ssl=context)
    try:
        yield TlsKafka(f"127.0.0.1:{tls_port}", ca_file, cert_file, key_file)
    finally:
        listener.close()
        for connection in connections:
            connection.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await asyncio.to_thread(kafka.stop)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # A client that hangs up, or fails the handshake on purpose, ends its connection only.
    with contextlib.suppress(OSError):  # ssl.SSLError included
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


@contextmanager
def service_logs(service: str, *, level: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Log as `service` does (JSON lines) inside the block; yield a reader of the lines written."""
    root = logging.getLogger()
    saved = (
        root.handlers[:],
        root.level,
        {name: logging.getLogger(name).level for name in _NOISY_LOGGERS},
    )
    lookups = {name: getattr(logging, name) for name in _RECORD_LOOKUPS}
    faststream = logging.getLogger("faststream")
    faststream_saved = (faststream.handlers[:], faststream.propagate)
    configure_logging(service, level=level, fmt="json")
    written = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in written.getvalue().splitlines()]

    try:
        yield read
    finally:
        root.handlers[:], level_before, levels = saved
        root.setLevel(level_before)
        for name, previous in levels.items():
            logging.getLogger(name).setLevel(previous)
        for name, value in lookups.items():
            setattr(logging, name, value)
        faststream.handlers[:], faststream.propagate = faststream_saved


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
