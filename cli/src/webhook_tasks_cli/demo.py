"""A demo external service: a pretend video generator that answers by callback, or at once.

`POST /generate-video` accepts the product summary's request, answers
`{"status": "accepted", "estimatedCompletion": ...}` at once, and later POSTs to
`callbackUrl`. The request's `outcome` parameter chooses what happens: `success`
(default), `error`, or `never` (no callback: the task will expire). `delaySeconds`
(default 2) sets when the callback is sent. `echoAuth: true` makes it a careless
service that echoes the request's Authorization header in its success: in the
result URL's query and in a request dump in its metadata.

`POST /generate-video-sync` is the synchronous alternative, for a task in `sync`
mode: it holds the request for `delaySeconds`, then answers with the result itself,
the body the callback would have carried (`never`: it holds the request until the
caller gives up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from webhook_tasks_contracts import WebhookRequest

logger = logging.getLogger("demo-video-generator")

MAX_DELAY_SECONDS = 3600.0
OUTCOMES = ("success", "error", "never")


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
        order = await _order(request, default_delay)
        if isinstance(order, JSONResponse):
            return order
        job, outcome, delay, echoed = order
        if outcome != "never":
            result = _result(job, outcome, public_url, echoed)
            task = asyncio.create_task(_call_back(http_holder["client"], job, result, delay))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return JSONResponse(
            {"status": "accepted", "estimatedCompletion": f"{delay:g}s"}, status_code=200
        )

    async def generate_video_sync(request: Request) -> JSONResponse:
        order = await _order(request, default_delay)
        if isinstance(order, JSONResponse):
            return order
        job, outcome, delay, echoed = order
        if outcome == "never":
            # Held until the caller gives up (its task's timeout), as a hung service would:
            # with the body read, the next message is the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                continue
        else:
            await asyncio.sleep(delay)
        return JSONResponse(_result(job, outcome, public_url, echoed))

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/generate-video", generate_video, methods=["POST"]),
            Route("/generate-video-sync", generate_video_sync, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _order(
    request: Request, default_delay: float
) -> tuple[WebhookRequest, str, float, str | None] | JSONResponse:
    """Return the job, its outcome, its delay and the credential to echo; or a 400 answer."""
    try:
        payload: dict[str, Any] = json.loads(await request.body())
        job = WebhookRequest.model_validate(payload)
    except (ValueError, ValidationError) as error:
        return JSONResponse({"error": f"invalid request: {error}"[:500]}, status_code=400)
    outcome = str(payload.get("outcome", "success"))
    if outcome not in OUTCOMES:
        return JSONResponse({"error": "outcome must be success, error or never"}, 400)
    delay = _delay(payload.get("delaySeconds"), default_delay)
    logger.info(
        "accepted job",
        extra={
            "correlation_id": job.correlation_id,
            "outcome": outcome,
            "delay": delay,
            "path": request.url.path,
        },
    )
    echoed = request.headers.get("authorization") if payload.get("echoAuth") is True else None
    return job, outcome, delay, echoed


def _delay(value: Any, default: float) -> float:
    try:
        delay = float(value) if value is not None else default
    except (TypeError, ValueError):
        delay = default
    return min(max(delay, 0.0), MAX_DELAY_SECONDS)


def _result(
    job: WebhookRequest, outcome: str, public_url: str, echoed: str | None = None
) -> dict[str, Any]:
    """Return the body that reports `job`'s outcome, by callback or as a sync answer."""
    if outcome == "success":
        result_url = f"{public_url.rstrip('/')}/results/{job.correlation_id}.mp4"
        metadata: dict[str, Any] = {
            "title": "Generated Video",
            "duration": "2m 30s",
            "fileSize": "125 MB",
        }
        if echoed is not None:
            result_url += "?" + urlencode({"auth": echoed.partition(" ")[2] or echoed})
            metadata["request"] = {"authorization": echoed}
        return {
            "correlationId": job.correlation_id,
            "status": "success",
            "resultUrl": result_url,
            "metadata": metadata,
        }
    return {
        "correlationId": job.correlation_id,
        "status": "error",
        "error": "Rendering failed: the prompt asked for more frames than the plan allows.",
    }


async def _call_back(
    http: httpx.AsyncClient, job: WebhookRequest, body: dict[str, Any], delay: float
) -> None:
    await asyncio.sleep(delay)
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
