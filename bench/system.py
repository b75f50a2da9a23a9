"""Start and reach what the benchmark runs against: servers, service processes, Kafka."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from webhook_tasks_cli.stack import Stack, StackOptions
from webhook_tasks_contracts import (
    REVEAL_SECRETS,
    CallbackTokens,
    TaskMetadata,
    TaskRequested,
    Topics,
    parse_callback_keys,
)
from webhook_tasks_contracts.topics import DEAD_LETTER_SUFFIX
from webhook_tasks_runtime.embedded import free_port, wait_for_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.kafka import ensure_topics

from .plan import Plan, Reporter

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_ENV = {
    # Production's log settings: a line per request is part of what a service costs.
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    # The benchmark's external service listens on loopback, which the SSRF guard refuses
    # unless allow-listed.
    "OUTBOUND_ALLOWLIST": "127.0.0.1/32",
}


class ServerProcess:
    """One of the benchmark's own servers (`python -m bench.servers`), on a loopback port."""

    def __init__(self, kind: str, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = (log_dir / f"bench-{kind}.log").open("wb")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.servers", kind, "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        return self._process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server accepts connections."""
        wait_for_port("127.0.0.1", self.port, timeout=timeout)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass
class Deployment:
    """Some of the four services on their own topic prefix, sharing the run's infrastructure."""

    stack: Stack
    topics: Topics
    tokens: CallbackTokens

    @classmethod
    def create(
        cls,
        infra: Infrastructure,
        label: str,
        log_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> Deployment:
        """Describe a deployment; nothing starts until `start`."""
        topics = Topics(f"bench-{label}-{uuid.uuid4().hex[:6]}")
        keys = f"bench:base64:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        options = StackOptions(
            database_url=infra.database_url,
            kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
            kafka_enable_idempotence=infra.supports_idempotent_producer,
            callback_token_keys=keys,
            gateway_port=free_port(),
            log_dir=log_dir / label,
            topic_prefix=topics.prefix,
            # As `webhook-tasks up` runs them: a fetch wait that suits the broker.
            kafka_fetch_max_wait_ms=infra.fetch_max_wait_ms,
            extra_env={**SERVICE_ENV, **(extra_env or {})},
        )
        return cls(Stack(options), topics, CallbackTokens(parse_callback_keys(keys)))

    @property
    def database_url(self) -> str:
        """Return the URL of the database this deployment's services use."""
        return self.stack.options.database_url

    @property
    def gateway_url(self) -> str:
        """Return the gateway's base URL."""
        return self.stack.options.gateway_url

    def start(self, services: Iterable[str]) -> None:
        """Start `services` at once (each in its own process); do not wait."""
        self.stack.options.log_dir.mkdir(parents=True, exist_ok=True)
        for service in services:
            self.stack.start_service(service)

    def start_replica(self, service: str, replica: int) -> None:
        """Start another process of `service`, named by `replica` (2 for the second)."""
        self.stack.start_service(service, replica=replica)

    def stop(self) -> None:
        """Stop every process of this deployment."""
        self.stack.stop()


DEPLOYED_PARTITIONS = 12
"""Partitions of each main topic as deploy/kubernetes/topics.yaml creates them (dead letters 3)."""


async def create_topics(
    bootstrap: str, deployments: Sequence[Deployment], *, as_deployed: bool = False
) -> None:
    """Create every topic first, so no service waits on auto-creation.

    `as_deployed`: main topics get DEPLOYED_PARTITIONS, for replicas to share them evenly
    (otherwise each topic has 3, and two consumers split them 2:1).
    """
    names = [name for deployment in deployments for name in deployment.topics.all()]
    dead_letters = [name for name in names if name.endswith(DEAD_LETTER_SUFFIX)]
    main = [name for name in names if name not in dead_letters]
    await ensure_topics(bootstrap, dead_letters)
    await ensure_topics(bootstrap, main, partitions=DEPLOYED_PARTITIONS if as_deployed else 3)


async def group_members(bootstrap: str, group_id: str) -> int:
    """Return how many members a consumer group has once stable (0 while it rebalances)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    groups = [group for response in responses for group in response.to_object()["groups"]]
    return sum(len(group["members"]) for group in groups if group["state"] == "Stable")


def producer(bootstrap: str, *, idempotence: bool) -> AIOKafkaProducer:
    """Return an unstarted producer with the services' durability settings."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotence, linger_ms=2
    )


async def reader(bootstrap: str, topic: str, *, fetch_max_wait_ms: int) -> AIOKafkaConsumer:
    """Return a started consumer reading every partition of `topic` from the start."""
    # Partitions are assigned by hand: a consumer group would take seconds to form.
    kafka = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=fetch_max_wait_ms,
        enable_auto_commit=False,
    )
    await kafka.start()
    try:
        await kafka.topics()  # loads the metadata that names the partitions
        partitions = [TopicPartition(topic, p) for p in kafka.partitions_for_topic(topic) or ()]
        if not partitions:
            raise RuntimeError(f"topic {topic} has no partitions")
        kafka.assign(partitions)
        await kafka.seek_to_beginning(*partitions)
    except BaseException:
        await kafka.stop()
        raise
    return kafka


def task_event(
    task_id: str, webhook_url: str, *, params: dict[str, Any] | None = None, timeout: int = 3600
) -> TaskRequested:
    """Return a webhook task event as an upstream system would publish it."""
    return TaskRequested(
        task_id=task_id,
        user_id="bench-user",
        project_id="bench-project",
        prompt="a benchmark task",
        followers=["bench-follower"],
        task_metadata=TaskMetadata(
            is_webhook_task=True,
            webhook_url=webhook_url,
            webhook_params=params or {},
            timeout_seconds=timeout,
        ),
    )


def encode_task(event: TaskRequested) -> bytes:
    """Serialise a task event for the task-requested topic."""
    return event.model_dump_json(context={REVEAL_SECRETS: True}).encode()


async def sink_records(sink_url: str) -> dict[str, Any]:
    """Take (and clear) what the benchmark's external service recorded."""
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(f"{sink_url}/records") as response,
    ):
        records: dict[str, Any] = json.loads(await response.read())
        return records


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    interval: float = 0.2,
) -> T:
    """Poll `await probe()` until `done(value)`, or for `within` seconds; return the last value."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on a short-lived connection."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def stack_env_note() -> str:
    """Return the settings the services ran with, for the results file."""
    return ", ".join(f"{key}={value}" for key, value in SERVICE_ENV.items() if key.isupper())


def cpu_count() -> int:
    """Return how many CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CpuMeter:
    """CPU time of named processes, read before and after a phase."""

    def __init__(self) -> None:
        self._processes: dict[str, psutil.Process] = {"benchmark": psutil.Process()}

    def watch(self, name: str, pid: int) -> None:
        """Include the process `pid` under `name`."""
        self._processes[name] = psutil.Process(pid)

    def cpu_ms(self, name: str, before: Mapping[str, float], count: int) -> float:
        """Return the CPU milliseconds `name` used per unit of work since `before`."""
        now = self.read()
        if name not in now or name not in before or count <= 0:
            return float("nan")
        return (now[name] - before[name]) * 1000 / count

    def read(self) -> dict[str, float]:
        """Return the CPU seconds (user and system) each live process has used so far."""
        used = {}
        for name, process in self._processes.items():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue  # it has stopped; it is not part of what follows
            used[name] = times.user + times.system
        return used

    async def settle(
        self, names: Iterable[str], *, within: float, busy_percent: float = 20.0
    ) -> float:
        """Wait until every named process is nearly idle for a moment; return the seconds waited."""
        # A phase must not inherit the previous one's backlog: the services have caught up
        # once none of them keeps a CPU busy.
        names = list(names)
        window = min(1.0, within / 10)
        started = time.monotonic()
        while time.monotonic() - started < within:
            before = self.read()
            await asyncio.sleep(window)
            usage = self.percent(before, self.read(), window)
            if all(usage.get(name, 0.0) < busy_percent for name in names):
                break
        return time.monotonic() - started

    @staticmethod
    def percent(
        before: Mapping[str, float], after: Mapping[str, float], seconds: float
    ) -> dict[str, float]:
        """Return each process's share of one CPU between two readings, in percent."""
        return {
            name: round((after[name] - before[name]) / seconds * 100, 1)
            for name in after
            if name in before and seconds > 0
        }


@dataclass
class Context:
    """What every phase needs."""

    infra: Infrastructure
    plan: Plan
    report: Reporter
    sink: ServerProcess
    run_id: str
    meter: CpuMeter
    fetch_max_wait_ms: int
    """The services' consumer fetch wait in this run."""

    @property
    def bootstrap(self) -> str:
        """Return the broker's address."""
        return self.infra.kafka_bootstrap_servers

    @property
    def idempotence(self) -> bool:
        """Return whether producers may be idempotent on this broker."""
        return self.infra.supports_idempotent_producer
