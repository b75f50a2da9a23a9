"""What `submit`, `callback` and `show` do, apart from parsing arguments and printing."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from webhook_tasks_contracts import (
    REVEAL_SECRETS,
    CallbackKeyError,
    CallbackTokens,
    TaskRequested,
    Topics,
    parse_callback_keys,
)

from .config import (
    SCHEMA_ENV_VARS,
    GatewayConfig,
    ServiceSchemas,
    StackConfig,
    kafka_client_options,
    service_schemas,
)

CONNECT_TIMEOUT_SECONDS = 15.0


class OperationError(RuntimeError):
    """A command could not do what was asked; the message says why in one line."""


async def publish_task(config: StackConfig, request: TaskRequested) -> None:
    """Publish a task event as an upstream system would (acks=all)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=config.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=config.kafka_enable_idempotence,
        request_timeout_ms=int(CONNECT_TIMEOUT_SECONDS * 1000),
        client_id="webhook-tasks-cli",
        **kafka_client_options(config.kafka_security),
    )
    try:
        await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_SECONDS)
    except (KafkaError, OSError, TimeoutError) as error:
        await producer.stop()
        raise OperationError(
            f"cannot reach Kafka at {config.kafka_bootstrap_servers}: {type(error).__name__}"
        ) from None
    except (ValueError, OverflowError):
        # OverflowError: a port beyond 65535, refused by the socket itself.
        await producer.stop()
        raise OperationError(
            f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port], not "
            f"{config.kafka_bootstrap_servers!r}"
        ) from None
    try:
        await asyncio.wait_for(
            producer.send_and_wait(
                Topics(config.topic_prefix).task_requested,
                request.model_dump_json(context={REVEAL_SECRETS: True}).encode(),
                key=request.task_id.encode(),
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
    except (KafkaError, TimeoutError) as error:
        raise OperationError(f"Kafka did not accept the task: {type(error).__name__}") from None
    finally:
        await producer.stop()


@dataclass(frozen=True)
class GatewayAnswer:
    """The gateway's answer to a callback."""

    status_code: int
    body: dict[str, Any] | str

    @property
    def accepted(self) -> bool:
        """Return whether the callback was accepted."""
        return 200 <= self.status_code < 300

    @property
    def explanation(self) -> str:
        """Return the answer's reason in one line."""
        if isinstance(self.body, dict):
            detail = self.body.get("detail") or self.body.get("title") or self.body.get("status")
            return str(detail)
        return self.body[:300]


async def send_callback(
    config: GatewayConfig | None,
    correlation_id: str,
    body: dict[str, Any],
    *,
    callback_url: str | None = None,
    schemas: ServiceSchemas | None = None,
) -> GatewayAnswer:
    """POST a callback as the external service would: to `callback_url` or a freshly minted one."""
    if callback_url is None:
        dispatcher_schema = (schemas or service_schemas()).dispatcher
        callback_url = await _mint_callback_url(config, correlation_id, dispatcher_schema)
        problem = url_problem(callback_url)
        if problem:
            raise OperationError(f"the gateway's URL (PUBLIC_CALLBACK_BASE_URL) {problem}")
    try:
        async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_SECONDS, trust_env=False) as http:
            response = await http.post(callback_url, json=body)
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError, OverflowError) as error:
        # Named by type alone: the URL, token included, is in many of their messages.
        raise OperationError(f"cannot reach the gateway: {type(error).__name__}") from None
    except ExceptionGroup as group:
        # Connecting tries each address at once (happy eyeballs): each failure is in the group.
        raise OperationError(f"cannot reach the gateway: {_first_cause(group)}") from None
    try:
        parsed: dict[str, Any] | str = response.json()
    except ValueError:
        parsed = response.text
    return GatewayAnswer(response.status_code, parsed)


def url_problem(url: str) -> str | None:
    """Return why a callback cannot be posted to `url`; None if it can."""
    # Each reason quotes none of the URL: a callback URL carries its token.
    if not url.isprintable() or not is_utf8(url):
        return "must be printable UTF-8 text"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket
        return "must be an absolute http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http or https URL"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "must have a port from 1 to 65535"
    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a URL that can be posted to"
    return None


def is_utf8(text: str) -> bool:
    """Return whether `text` can be encoded, so sent or stored, as UTF-8."""
    # Bytes that are not UTF-8 come from the shell as lone surrogates, which nothing can send.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _first_cause(group: BaseExceptionGroup[Any]) -> str:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return type(error).__name__


async def _mint_callback_url(
    config: GatewayConfig | None, correlation_id: str, dispatcher_schema: str
) -> str:
    if config is None or not config.gateway_url or not config.callback_token_keys:
        raise OperationError(
            "to call back without --callback-url, set PUBLIC_CALLBACK_BASE_URL and "
            "CALLBACK_TOKEN_KEYS, or run `webhook-tasks up` on this machine"
        )
    if config.database_url:
        # Holding the key, we could mint a URL for any id; say so plainly when it is unknown.
        known = await _is_known_correlation_id(
            config.database_url, dispatcher_schema, correlation_id
        )
        if not known:
            raise OperationError(f"unknown correlation id {correlation_id!r}")
    try:
        tokens = CallbackTokens(parse_callback_keys(config.callback_token_keys))
    except CallbackKeyError as error:
        raise OperationError(f"CALLBACK_TOKEN_KEYS is unusable: {error}") from None
    return tokens.callback_url(config.gateway_url, correlation_id)


@dataclass(frozen=True)
class TaskReport:
    """Everything `show` prints about one run of a task."""

    task: Any
    attempts: list[Any]
    history: list[Any]
    deadline_at: datetime | None
    comments: list[Any]
    notifications: list[Any]


async def inspect_tasks(
    database_url: str, task_or_correlation_id: str, schemas: ServiceSchemas | None = None
) -> list[TaskReport]:
    """Return state, timestamps, attempts, history and comments of matching tasks."""
    from webhook_tasks_dispatcher import repository as dispatcher_repository
    from webhook_tasks_expirer import repository as expirer_repository
    from webhook_tasks_notifier import repository as notifier_repository

    schemas = schemas or service_schemas()
    conn = await connect(database_url)
    try:
        await _require_schemas(conn, asdict(schemas))
        await _use_schema(conn, schemas.dispatcher)
        tasks = await dispatcher_repository.find_tasks(conn, task_or_correlation_id)
        reports = []
        for task in tasks:
            await _use_schema(conn, schemas.dispatcher)
            attempts = await dispatcher_repository.attempts_for(conn, task.correlation_id)
            history = await dispatcher_repository.history_for(conn, task.correlation_id)
            await _use_schema(conn, schemas.expirer)
            deadline = await expirer_repository.deadline_for(conn, task.correlation_id)
            await _use_schema(conn, schemas.notifier)
            comments = await notifier_repository.comments_for(conn, [task.correlation_id])
            notifications = await notifier_repository.notifications_for(conn, [task.correlation_id])
            reports.append(TaskReport(task, attempts, history, deadline, comments, notifications))
        return reports
    except asyncpg.UndefinedTableError:
        raise OperationError(
            "the database has no webhook-tasks tables yet: start the services first"
        ) from None
    finally:
        await conn.close()


async def _is_known_correlation_id(
    database_url: str, dispatcher_schema: str, correlation_id: str
) -> bool:
    conn = await connect(database_url)
    try:
        await _require_schemas(conn, {"dispatcher": dispatcher_schema})
        await _use_schema(conn, dispatcher_schema)
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE correlation_id = $1)", correlation_id
            )
        )
    except asyncpg.UndefinedTableError:
        return False
    finally:
        await conn.close()


async def _require_schemas(conn: asyncpg.Connection, schema_of_service: dict[str, str]) -> None:
    """Refuse a schema the database lacks, naming the setting that chose it."""
    # Without this, a mistyped schema reads as "no such task" or "no tables yet".
    present = {
        row["nspname"]
        for row in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])",
            list(schema_of_service.values()),
        )
    }
    for service, schema in schema_of_service.items():
        if schema not in present:
            raise OperationError(
                f"the database has no schema {schema!r} for the {service}: start the services "
                f"first, or set --{service}-schema ({SCHEMA_ENV_VARS[service]}) to the "
                f"{service}'s DATABASE_SCHEMA"
            )


async def _use_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Make unqualified table names refer to `schema`."""
    # An identifier cannot be a bound parameter: the server's quote_ident quotes it instead.
    await conn.execute("SELECT set_config('search_path', quote_ident($1), false)", schema)


async def connect(database_url: str) -> asyncpg.Connection:
    """Connect to PostgreSQL; raise OperationError, never quoting the URL, when it cannot."""
    try:
        return await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise OperationError(f"cannot reach PostgreSQL: {type(error).__name__}") from None
    except OverflowError:
        # The socket's own refusal of a port beyond 65535.
        raise OperationError("the port in DATABASE_URL must be from 1 to 65535") from None
    except ValueError:
        # asyncpg's message may quote part of the URL, password included.
        raise OperationError(
            "DATABASE_URL is not a PostgreSQL URL (percent-encode special characters in the "
            "password)"
        ) from None
