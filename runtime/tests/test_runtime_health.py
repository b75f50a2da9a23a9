"""Health endpoints and metrics a worker serves to Kubernetes and Prometheus."""

from __future__ import annotations

import httpx
from webhook_tasks_runtime.embedded import free_port
from webhook_tasks_runtime.observability import EVENTS_CONSUMED, HealthServer


async def test_liveness_readiness_and_metrics() -> None:
    ready = {"value": False}

    async def check() -> bool:
        return ready["value"]

    port = free_port()
    server = HealthServer(host="127.0.0.1", port=port, ready=check)
    EVENTS_CONSUMED.labels("health-test", "handled").inc(3)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503
            ready["value"] = True
            assert (await http.get("/readyz")).status_code == 200
            metrics = await http.get("/metrics")
    finally:
        await server.stop()

    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        'webhook_tasks_events_consumed_total{consumer="health-test",outcome="handled"} 3.0'
        in metrics.text
    )


async def test_a_failing_readiness_check_is_not_ready_rather_than_an_error() -> None:
    async def broken() -> bool:
        raise ConnectionError("database unreachable")

    port = free_port()
    server = HealthServer(host="127.0.0.1", port=port, ready=broken)
    await server.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        await server.stop()

    assert answer.status_code == 503
