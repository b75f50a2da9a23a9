"""`webhook-tasks up`: the whole system on one machine, for a first run and local work."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import time
import uuid

from aiokafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape
from webhook_tasks_contracts import TaskMetadata, TaskRequested, Topics
from webhook_tasks_contracts.topics import DEAD_LETTER_SUFFIX
from webhook_tasks_runtime.embedded import free_port
from webhook_tasks_runtime.infra import Infrastructure, start_infrastructure
from webhook_tasks_runtime.kafka import ensure_topics
from webhook_tasks_runtime.settings import KAFKA_MAX_MESSAGE_BYTES

from .config import (
    StackConfig,
    env_flag,
    kafka_client_options,
    kafka_security_from_env,
    remove_stack_file,
    running_stack,
    stack_file,
    write_stack_file,
)
from .operations import OperationError, connect, publish_task
from .stack import Stack, StackError, StackOptions
from .watch import EventWatcher

RESTART_DELAYS = (0.0, 1.0, 5.0, 15.0, 30.0)
"""Waits before starting an exited service again, by how often it exited in a row."""
RAN_A_WHILE_SECONDS = 60.0
"""A service that ran this long before it exited is not crashing in a loop."""

DEMO_DELAY_SECONDS = 3


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Each stops the stack: SIGHUP comes when its terminal closes or its SSH session drops."""


def run_up(*, demo: bool, gateway_port: int, console: Console) -> None:
    """Run the stack until a stop signal, then stop everything it started."""
    running = running_stack()
    if running is not None and running.pid != os.getpid():
        # Started anew, it would clear the running stack's logs and take its stack file.
        raise OperationError(
            f"a stack is already running (process {running.pid}, gateway "
            f"{running.gateway_url or 'unknown'}): stop it first, or give this one a state "
            "directory of its own with XDG_STATE_HOME or WEBHOOK_TASKS_STACK_FILE"
        )
    if not _port_free(gateway_port):
        raise OperationError(f"port {gateway_port} is in use: pass --gateway-port with a free one")
    external = bool(os.environ.get("DATABASE_URL") and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    console.print(
        "using PostgreSQL and Kafka from DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS"
        if external
        else "starting embedded PostgreSQL and Kafka-protocol broker..."
    )
    infra = start_infrastructure(allow_docker=False)
    try:
        asyncio.run(_run(infra, demo=demo, gateway_port=gateway_port, console=console))
    finally:
        infra.close()
        _say(console, "stopped")


async def _run(infra: Infrastructure, *, demo: bool, gateway_port: int, console: Console) -> None:
    topics = Topics(os.environ.get("TOPIC_PREFIX", "webhook-tasks"))
    keys = os.environ.get("CALLBACK_TOKEN_KEYS") or _development_key()
    # An explicit setting wins: a Kafka-protocol broker given by URL may lack idempotence too.
    idempotence = env_flag("KAFKA_ENABLE_IDEMPOTENCE", default=infra.supports_idempotent_producer)
    # A broker's 1 MiB default would refuse callbacks near the gateway's body limit, and the
    # events and dead letters that carry them on; the services' producers send as much.
    large = {topics.callback_received, topics.task_lifecycle, topics.notifications}
    large |= {name for name in topics.all() if name.endswith(DEAD_LETTER_SUFFIX)}
    max_message_bytes = os.environ.get("KAFKA_MAX_MESSAGE_BYTES") or str(KAFKA_MAX_MESSAGE_BYTES)
    # An external Kafka is reached as the services reach it; the embedded one in plain text.
    security = kafka_security_from_env() if infra.source == "environment" else {}
    client_options = kafka_client_options(security)
    try:
        await ensure_topics(
            infra.kafka_bootstrap_servers,
            [name for name in topics.all() if name not in large],
            client_options=client_options,
        )
        await ensure_topics(
            infra.kafka_bootstrap_servers,
            sorted(large),
            configs={"max.message.bytes": max_message_bytes},
            client_options=client_options,
        )
    except (KafkaError, OSError) as error:
        raise OperationError(
            f"cannot reach Kafka at {infra.kafka_bootstrap_servers}: "
            f"{str(error) or type(error).__name__}"
        ) from None
    if infra.source == "environment":
        # Else every service would exit at start and be started again, for ever.
        await _require_database(infra.database_url)
    options = StackOptions(
        database_url=infra.database_url,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        kafka_enable_idempotence=idempotence,
        kafka_fetch_max_wait_ms=int(
            os.environ.get("KAFKA_FETCH_MAX_WAIT_MS") or infra.fetch_max_wait_ms
        ),
        callback_token_keys=keys,
        gateway_port=gateway_port,
        log_dir=stack_file().parent / "logs",
        topic_prefix=topics.prefix,
    )
    stack = Stack(options)
    watcher = EventWatcher(
        infra.kafka_bootstrap_servers, topics, console.print, client_options=client_options
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    config = StackConfig(
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        database_url=infra.database_url,
        gateway_url=options.gateway_url,
        callback_token_keys=keys,
        topic_prefix=topics.prefix,
        kafka_enable_idempotence=idempotence,
        pid=os.getpid(),
        kafka_security=security,
    )
    watching: asyncio.Task[None] | None = None
    try:
        await watcher.start()
        watching = asyncio.create_task(watcher.run())
        console.print(f"starting services (logs in {options.log_dir})...", markup=False)
        try:
            await asyncio.to_thread(stack.start)
        except StackError:
            if stop.is_set():
                # Ctrl-C reaches the services too: their exit is the stop, not a failure.
                return
            raise
        write_stack_file(config)
        if demo:
            demo_url = await asyncio.to_thread(stack.start_demo_service, free_port())
            await _submit_demo_task(config, f"{demo_url}/generate-video", console)
        console.print(
            f"[bold]callback gateway:[/] {escape(options.gateway_url)}/v1/callbacks/"
            "<correlationId>/<token>\n"
            "try: webhook-tasks show <task id> | webhook-tasks submit ... | "
            "webhook-tasks callback ...\n"
            "Ctrl-C stops everything."
        )
        await _supervise(stack, stop, console)
    finally:
        _say(console, "stopping...")
        await _shut_down(watcher, watching, stack, console)


async def _shut_down(
    watcher: EventWatcher,
    watching: asyncio.Task[None] | None,
    stack: Stack,
    console: Console,
) -> None:
    """Stop the step printer, then the services, then forget the stack: each even if one fails."""
    try:
        if watching is not None:
            watching.cancel()
            # A printer that ended on its own error must not leave the services running.
            failure = (await asyncio.gather(watching, return_exceptions=True))[0]
            if isinstance(failure, Exception):
                _say(console, f"the step printer had stopped: {failure!r}")
        await watcher.stop()
    finally:
        try:
            await asyncio.to_thread(stack.stop)
        finally:
            remove_stack_file(os.getpid())


async def _supervise(
    stack: Stack, stop: asyncio.Event, console: Console, *, poll_interval: float = 1.0
) -> None:
    """Until `stop` is set, start again any service that exits, as Kubernetes would, saying so."""
    crashes: dict[str, int] = {}
    started: dict[str, float] = {}
    restart_at: dict[str, float] = {}  # each on its own clock: one's wait holds up no other
    while not await _stopped_within(stop, poll_interval):
        now = time.monotonic()
        for service, code in stack.exited().items():
            if service in restart_at:
                continue
            # One that ran a while starts again at once; one that keeps exiting, ever later.
            recently = now - started.get(service, 0.0) < RAN_A_WHILE_SECONDS
            crashes[service] = crashes.get(service, 0) + 1 if recently else 1
            delay = RESTART_DELAYS[min(crashes[service], len(RESTART_DELAYS)) - 1]
            restart_at[service] = now + delay
            _say(
                console,
                f"[red]{service} exited with code {code}[/]; starting it again in {delay:g}s "
                f"(log: {escape(str(stack.log_file(service)))})",
                markup=True,
            )
        for service, due in list(restart_at.items()):
            if due <= time.monotonic():
                del restart_at[service]
                stack.start_service(service)
                started[service] = time.monotonic()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def _submit_demo_task(config: StackConfig, webhook_url: str, console: Console) -> None:
    request = TaskRequested(
        task_id=f"demo-{uuid.uuid4().hex[:8]}",
        user_id="demo-user",
        project_id="demo-project",
        prompt="A 30-second video of a lighthouse at dawn",
        task_metadata=TaskMetadata(
            is_webhook_task=True,
            webhook_url=webhook_url,
            webhook_params={"quality": "high", "format": "mp4", "delaySeconds": DEMO_DELAY_SECONDS},
            timeout_seconds=60,
        ),
    )
    await publish_task(config, request)
    console.print(f"[bold]demo task submitted:[/] {request.task_id} -> {escape(webhook_url)}")


def _say(console: Console, text: str, *, markup: bool = False) -> None:
    """Print a line of the stop; a terminal that hung up must not keep the stop from its end."""
    with contextlib.suppress(OSError):
        console.print(text, markup=markup)


async def _require_database(database_url: str) -> None:
    """Raise OperationError, naming why, unless PostgreSQL at `database_url` answers."""
    conn = await connect(database_url)
    await conn.close()


def _development_key() -> str:
    # A fresh key per run: callback URLs of an earlier run stop working, as they should.
    return f"dev:base64:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # Like the server's own bind: connections of an earlier run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


__all__ = ["run_up"]
