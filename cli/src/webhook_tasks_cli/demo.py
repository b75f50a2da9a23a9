"""A demo external service: a pretend video generator that answers by callback.

It accepts the product summary's request, answers `{"status": "accepted",
"estimatedCompletion": ...}` at once, and later POSTs to `callbackUrl`. The
request's `outcome` parameter chooses what happens: `success` (default),
`error`, or `never` (no callback: the task will expire). `delaySeconds`
(default 2) sets when the callback is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from webhook_tasks_contracts import WebhookRequest

logger = logging.getLogger("demo-video-generator")

MAX_DELAY_SECONDS = 3600.0


def create_demo_app(*, public_url: str, default_delay: float = 2.0) -> Starlette:
    """Return the demo service; `public_url` is where its pretend results live."""
    pending: set[asyncio.Task[None]] = set()
    http_holder: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
            http_holder["client"] = http
            yield
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def generate_video(request: Request) -> JSONResponse:
        try:
            payload: dict[str, Any] = json.loads(await request.body())
            job = WebhookRequest.model_validate(payload)
        except (ValueError, ValidationError) as error:
            return JSONResponse({"error": f"invalid request: {error}"[:500]}, status_code=400)
        outcome = str(payload.get("outcome", "success"))
        if outcome not in ("success", "error", "never"):
            return JSONResponse({"error": "outcome must be success, error or never"}, 400)
        delay = _delay(payload.get("delaySeconds"), default_delay)
        logger.info(
            "accepted job",
            extra={"correlation_id": job.correlation_id, "outcome": outcome, "delay": delay},
        )
        if outcome != "never":
            task = asyncio.create_task(
                _call_back(http_holder["client"], job, outcome, delay, public_url)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        return JSONResponse(
            {"status": "accepted", "estimatedCompletion": f"{delay:g}s"}, status_code=200
        )

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/generate-video", generate_video, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _delay(value: Any, default: float) -> float:
    try:
        delay = float(value) if value is not None else default
    except (TypeError, ValueError):
        delay = default
    return min(max(delay, 0.0), MAX_DELAY_SECONDS)


async def _call_back(
    http: httpx.AsyncClient, job: WebhookRequest, outcome: str, delay: float, public_url: str
) -> None:
    await asyncio.sleep(delay)
    body: dict[str, Any]
    if outcome == "success":
        body = {
            "correlationId": job.correlation_id,
            "status": "success",
            "resultUrl": f"{public_url.rstrip('/')}/results/{job.correlation_id}.mp4",
            "metadata": {
                "title": "Generated Video",
                "duration": "2m 30s",
                "fileSize": "125 MB",
            },
        }
    else:
        body = {
            "correlationId": job.correlation_id,
            "status": "error",
            "error": "Rendering failed: the prompt asked for more frames than the plan allows.",
        }
    for attempt in range(5):
        try:
            response = await http.post(job.callback_url, json=body)
        except httpx.HTTPError as error:
            logger.warning("callback failed: %s", error, extra={"attempt": attempt + 1})
        else:
            if response.status_code < 500:
                logger.info(
                    "called back",
                    extra={"correlation_id": job.correlation_id, "status": response.status_code},
                )
                return
        await asyncio.sleep(min(2**attempt, 10))
