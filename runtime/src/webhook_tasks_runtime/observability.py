"""Prometheus metrics and the health endpoints a worker serves to Kubernetes.

/healthz answers from the worker's own event loop, so a blocked loop fails the
liveness probe; /readyz also checks PostgreSQL; /metrics is Prometheus text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)

EVENTS_CONSUMED = Counter(
    "webhook_tasks_events_consumed_total",
    "Events a consumer handled or dead-lettered.",
    ["consumer", "outcome"],
)
BATCHES_FAILED = Counter(
    "webhook_tasks_batches_failed_total",
    "Batches whose handling failed and that will be delivered again.",
    ["consumer"],
)
CONSUMER_FAILURES_IN_A_ROW = Gauge(
    "webhook_tasks_consumer_failures_in_a_row",
    "Times in a row the consumer's batch has failed, 0 once one succeeds: it keeps growing "
    "while PostgreSQL is away or while an event fails every time it is handled.",
    ["consumer"],
)
BATCH_SECONDS = Histogram(
    "webhook_tasks_batch_seconds",
    "Time to handle one batch of events, effects committed.",
    ["consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTBOX_PUBLISHED = Counter(
    "webhook_tasks_outbox_published_total",
    "Events relayed from the outbox to Kafka.",
    ["schema"],
)

OUTBOX_OLDEST_WAITING = Gauge(
    "webhook_tasks_outbox_oldest_waiting_seconds",
    "How long the oldest event in the outbox had waited when the relay last looked (0 when "
    "it found the outbox empty): it grows while Kafka refuses or cannot be reached.",
    ["schema"],
)

ReadinessCheck = Callable[[], Awaitable[bool]]


class HealthServer:
    """Serve /healthz, /readyz and /metrics on one port."""

    def __init__(self, *, host: str, port: int, ready: ReadinessCheck) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start listening."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        logger.info("health endpoints listening", extra={"port": self._port})

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        try:
            ready = await self._ready()
        except Exception:
            ready = False
        if ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
