"""HTTP calls to external services: the initiating request and its acknowledgement."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import SecretStr, ValidationError
from webhook_tasks_contracts import WebhookAck

MAX_STORED_BODY_CHARS = 2000
"""Response bodies are kept for diagnosis only; a page of text is enough and bounds the row."""

Outcome = Literal["accepted", "rejected", "unreachable"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened to one request to an external service."""

    outcome: Outcome
    latency_ms: float
    status_code: int | None = None
    ack: WebhookAck | None = None
    response_body: str | None = None
    error: str | None = None

    @property
    def reason(self) -> str:
        """Return a one-line explanation fit for the user's comment (never a secret)."""
        if self.outcome == "accepted":
            return "accepted"
        if self.status_code is not None:
            return f"the external service answered HTTP {self.status_code}"
        return f"the external service could not be reached ({self.error})"


def create_http_client(*, timeout_seconds: float, max_connections: int) -> httpx.AsyncClient:
    """Return the process's one HTTP client, on the aiohttp transport (measured fastest)."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,
    )


class WebhookClient:
    """Send the product summary's request to an external service."""

    def __init__(self, http: httpx.AsyncClient, *, max_response_bytes: int = 64 * 1024) -> None:
        self._http = http
        self._max_response_bytes = max_response_bytes

    async def send(
        self, url: str, body: dict[str, Any], *, auth: SecretStr | None
    ) -> DeliveryResult:
        """POST `body` to `url`, `auth` as the Authorization header; classify the answer."""
        headers = {"content-type": "application/json", "user-agent": "webhook-tasks/0.1"}
        if auth is not None:
            headers["authorization"] = auth.get_secret_value()
        started = time.perf_counter()
        try:
            async with self._http.stream(
                "POST", url, content=json.dumps(body).encode(), headers=headers
            ) as response:
                raw = await self._read_capped(response)
        except httpx.HTTPError as error:
            return DeliveryResult("unreachable", _elapsed_ms(started), error=_describe(error, auth))
        latency = _elapsed_ms(started)
        text = raw.decode(errors="replace")[:MAX_STORED_BODY_CHARS]
        if not response.is_success:
            return DeliveryResult("rejected", latency, response.status_code, response_body=text)
        return DeliveryResult(
            "accepted", latency, response.status_code, ack=_parse_ack(raw), response_body=text
        )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self._max_response_bytes:
                # The body is informational; stop reading rather than buffer a huge answer.
                break
        return b"".join(chunks)[: self._max_response_bytes]


def _parse_ack(raw: bytes) -> WebhookAck | None:
    if not raw.strip():
        return None
    try:
        return WebhookAck.model_validate_json(raw)
    except ValidationError:
        return None


def _describe(error: httpx.HTTPError, auth: SecretStr | None) -> str:
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    if auth is not None:
        # Defence in depth: no transport error should echo a header, but never risk it.
        text = text.replace(auth.get_secret_value(), "**********")
    return text[:500]


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
