"""The outbound request: what is sent, and how each answer is classified."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr
from webhook_tasks_contracts import utc_now
from webhook_tasks_dispatcher.client import (
    MAX_STORED_BODY_CHARS,
    DeliveryResult,
    OutboundRequest,
    WebhookClient,
)
from webhook_tasks_dispatcher.guard import UrlGuard

SECRET = "Bearer sk-live-very-secret"


async def resolve_publicly(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


class Client:
    """A WebhookClient on MockTransport, with the old call shape for brevity."""

    def __init__(self, client: WebhookClient) -> None:
        self._client = client

    async def send(
        self, url: str, body: dict[str, object], *, auth: SecretStr | None
    ) -> DeliveryResult:
        request = OutboundRequest(url, json.dumps(body).encode(), "msg_1", auth=auth)
        return await self._client.send(request, now=utc_now())


def client_for(handler: object, **options: int) -> Client:
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    guard = UrlGuard(resolve=resolve_publicly)
    return Client(WebhookClient(transport, guard=guard, **options))


async def test_sends_the_body_as_json_with_auth_as_the_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "accepted", "estimatedCompletion": "20s"})

    result = await client_for(handler).send(
        "https://svc.example.com/run", {"correlationId": "c"}, auth=SecretStr(SECRET)
    )

    assert result.outcome == "accepted"
    assert result.ack is not None
    assert result.ack.estimated_completion == "20s"
    (request,) = seen
    assert request.method == "POST"
    assert request.headers["authorization"] == SECRET
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"correlationId": "c"}


async def test_no_auth_means_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    result = await client_for(handler).send("https://svc/", {}, auth=None)

    assert result.outcome == "accepted"
    assert result.ack is None
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_non_2xx_is_rejected_with_the_status(status: int) -> None:
    result = await client_for(lambda request: httpx.Response(status, text="nope")).send(
        "https://svc/", {}, auth=None
    )

    assert result.outcome == "rejected"
    assert result.status_code == status
    assert result.response_body == "nope"
    assert f"HTTP {status}" in result.reason


async def test_a_connection_error_is_unreachable_and_never_echoes_the_secret() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.headers['authorization']}")

    result = await client_for(handler).send("https://svc/", {}, auth=SecretStr(SECRET))

    assert result.outcome == "unreachable"
    assert result.status_code is None
    assert "ConnectError" in (result.error or "")
    assert SECRET not in (result.error or "")
    assert SECRET not in result.reason


async def test_a_huge_answer_is_read_only_up_to_the_cap() -> None:
    result = await client_for(lambda request: httpx.Response(200, content=b"x" * 500_000)).send(
        "https://svc/",
        {},
        auth=None,
    )

    assert result.outcome == "accepted"
    assert result.response_body is not None
    assert len(result.response_body) == MAX_STORED_BODY_CHARS


async def test_a_2xx_with_an_unparseable_body_is_still_accepted() -> None:
    result = await client_for(lambda request: httpx.Response(200, text="<html>ok</html>")).send(
        "https://svc/", {}, auth=None
    )

    assert result.outcome == "accepted"
    assert result.ack is None
