"""`show` and `callback` read each service's tables in the schema that service was given."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web
from webhook_tasks_cli.config import SCHEMA_ENV_VARS, ServiceSchemas, service_schemas
from webhook_tasks_contracts import TaskCompleted, TaskRef
from webhook_tasks_dispatcher import repository as dispatcher_repository
from webhook_tasks_expirer import repository as expirer_repository
from webhook_tasks_notifier import repository as notifier_repository
from webhook_tasks_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from webhook_tasks_runtime.infra import Infrastructure

from .conftest import run

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(minutes=5)
SHOWN_DEADLINE = "2030-01-01T12:05:00.000+00:00"
COMMENT = "The video is ready."
PACKAGE_OF_SERVICE = {
    "dispatcher": "webhook_tasks_dispatcher",
    "expirer": "webhook_tasks_expirer",
    "notifier": "webhook_tasks_notifier",
}
CALLBACK_TOKEN_KEYS = f"k1:base64:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def test_without_settings_each_service_keeps_its_own_default_schema() -> None:
    assert service_schemas() == ServiceSchemas(
        dispatcher="dispatcher", expirer="expirer", notifier="notifier"
    )


@pytest.fixture
async def schemas(
    infrastructure: Infrastructure, unique_schema: str
) -> AsyncIterator[ServiceSchemas]:
    """Give each service's tables a schema of its own, none of them the service's default."""
    schemas = ServiceSchemas(
        **{service: f"{unique_schema}_{service}" for service in PACKAGE_OF_SERVICE}
    )
    pools = {}
    try:
        for service, schema in asdict(schemas).items():
            pools[service] = await create_pool(infrastructure.database_url, schema, max_size=1)
            migrations = runtime_migrations() + load_migrations(PACKAGE_OF_SERVICE[service])
            await migrate(pools[service], schema, migrations)
        yield schemas
    finally:
        for service, pool in pools.items():
            await pool.execute(f'DROP SCHEMA IF EXISTS "{asdict(schemas)[service]}" CASCADE')
            await pool.close()


@pytest.fixture
async def task(infrastructure: Infrastructure, schemas: ServiceSchemas) -> TaskRef:
    """Record a task as the services would: its row, its deadline and its chat comment."""
    ref = TaskRef(task_id=f"task-{uuid.uuid4().hex[:10]}", user_id="u1", project_id="p1")
    correlation_id = str(uuid.uuid4())
    conn = await asyncpg.connect(infrastructure.database_url)
    try:
        await conn.execute(f'SET search_path TO "{schemas.dispatcher}"')
        await dispatcher_repository.insert_tasks(conn, [claim(ref, correlation_id)])
        await conn.execute(f'SET search_path TO "{schemas.expirer}"')
        await expirer_repository.store_deadline(conn, correlation_id, ref.task_id, DEADLINE)
        await conn.execute(f'SET search_path TO "{schemas.notifier}"')
        completed = TaskCompleted(correlation_id=correlation_id, task=ref)
        await notifier_repository.insert_terminal_comment(conn, completed, "result", COMMENT)
    finally:
        await conn.close()
    return ref


def claim(ref: TaskRef, correlation_id: str) -> dispatcher_repository.Claim:
    """Return the dispatcher's record of a new task and its first request."""
    return dispatcher_repository.Claim(
        task=dispatcher_repository.NewTask(
            correlation_id=correlation_id,
            idempotency_key=f"key-{correlation_id}",
            task_id=ref.task_id,
            user_id=ref.user_id,
            project_id=ref.project_id,
            assistant_id=None,
            followers=[],
            webhook_url="https://svc.example/generate-video",
            mode="callback",
            timeout_seconds=300,
        ),
        request=dispatcher_repository.PendingRequest(
            correlation_id=correlation_id,
            webhook_url="https://svc.example/generate-video",
            mode="callback",
            body=b"{}",
            auth=None,
            attempts=0,
            timeout_seconds=300,
            pending_since=NOW,
        ),
        created_at=NOW,
        lease_until=NOW,
        due_at=NOW,
        lease_seconds=60,
    )


async def correlation_id_of(database_url: str, schemas: ServiceSchemas, ref: TaskRef) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'SET search_path TO "{schemas.dispatcher}"')
        (found,) = await dispatcher_repository.find_tasks(conn, ref.task_id)
        return found.correlation_id
    finally:
        await conn.close()


def schema_env(schemas: ServiceSchemas) -> dict[str, str]:
    """Return the environment variables naming each service's schema."""
    return {SCHEMA_ENV_VARS[service]: schema for service, schema in asdict(schemas).items()}


def schema_options(schemas: ServiceSchemas) -> list[str]:
    """Return the command-line options naming each service's schema."""
    return [
        part
        for service, schema in asdict(schemas).items()
        for part in (f"--{service}-schema", schema)
    ]


def assert_one_line_error(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {message}"), done.stderr


@pytest.mark.integration
def test_show_reads_the_schemas_named_in_the_environment(
    infrastructure_env: dict[str, str], schemas: ServiceSchemas, task: TaskRef
) -> None:
    done = run(
        "-m", "webhook_tasks_cli", "show", task.task_id, **infrastructure_env, **schema_env(schemas)
    )

    assert done.returncode == 0, done.stderr
    assert task.task_id in done.stdout
    assert SHOWN_DEADLINE in done.stdout
    assert COMMENT in done.stdout


@pytest.mark.integration
def test_show_reads_the_schemas_named_by_its_options(
    infrastructure_env: dict[str, str], schemas: ServiceSchemas, task: TaskRef
) -> None:
    wrong = ServiceSchemas(dispatcher="nowhere", expirer="nowhere", notifier="nowhere")

    done = run(
        "-m",
        "webhook_tasks_cli",
        "show",
        task.task_id,
        *schema_options(schemas),
        **infrastructure_env,
        **schema_env(wrong),
    )

    assert done.returncode == 0, done.stderr
    assert task.task_id in done.stdout
    assert SHOWN_DEADLINE in done.stdout
    assert COMMENT in done.stdout


@pytest.mark.integration
@pytest.mark.parametrize("missing", ["no_such_schema", 'dispatcher"; DROP SCHEMA public; --'])
def test_show_names_a_schema_the_database_lacks_in_one_line(
    infrastructure_env: dict[str, str], schemas: ServiceSchemas, task: TaskRef, missing: str
) -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "show",
        task.task_id,
        "--expirer-schema",
        missing,
        **infrastructure_env,
        **schema_env(schemas),
    )

    assert_one_line_error(
        done,
        f"the database has no schema {missing!r} for the expirer: start the services first, "
        "or set --expirer-schema (EXPIRER_DATABASE_SCHEMA)",
    )


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[str]]]:
    """Answer callbacks as the gateway would once Kafka holds them; return its URL and paths."""
    received: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    # A started site has a server; aiohttp types it as optional.
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


@pytest.mark.integration
async def test_callback_finds_the_correlation_id_in_the_dispatchers_schema(
    infrastructure: Infrastructure,
    infrastructure_env: dict[str, str],
    schemas: ServiceSchemas,
    task: TaskRef,
    gateway: tuple[str, list[str]],
) -> None:
    gateway_url, received = gateway
    correlation_id = await correlation_id_of(infrastructure.database_url, schemas, task)

    done = await asyncio.to_thread(
        run,
        "-m",
        "webhook_tasks_cli",
        "callback",
        correlation_id,
        "success",
        **infrastructure_env,
        DISPATCHER_DATABASE_SCHEMA=schemas.dispatcher,
        PUBLIC_CALLBACK_BASE_URL=gateway_url,
        CALLBACK_TOKEN_KEYS=CALLBACK_TOKEN_KEYS,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "202 accepted"
    assert [path.split("/")[3] for path in received] == [correlation_id]


@pytest.mark.integration
async def test_callback_names_a_dispatcher_schema_the_database_lacks_in_one_line(
    infrastructure: Infrastructure,
    infrastructure_env: dict[str, str],
    schemas: ServiceSchemas,
    task: TaskRef,
    gateway: tuple[str, list[str]],
) -> None:
    gateway_url, received = gateway
    correlation_id = await correlation_id_of(infrastructure.database_url, schemas, task)

    done = await asyncio.to_thread(
        run,
        "-m",
        "webhook_tasks_cli",
        "callback",
        correlation_id,
        "success",
        **infrastructure_env,
        DISPATCHER_DATABASE_SCHEMA="no_such_schema",
        PUBLIC_CALLBACK_BASE_URL=gateway_url,
        CALLBACK_TOKEN_KEYS=CALLBACK_TOKEN_KEYS,
    )

    assert_one_line_error(
        done,
        "the database has no schema 'no_such_schema' for the dispatcher: start the services "
        "first, or set --dispatcher-schema (DISPATCHER_DATABASE_SCHEMA)",
    )
    assert received == []
