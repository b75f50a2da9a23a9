"""429 with Retry-After, per client address and per correlation id; off unless configured."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook
from webhook_tasks_contracts import CallbackTokens, callback_url
from webhook_tasks_gateway import GatewaySettings


def body(cid: str) -> dict[str, Any]:
    return {"correlationId": cid, "status": "progress", "progress": 5}


async def test_no_limit_by_default(
    client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
) -> None:
    url = tokens.callback_url("http://gateway", cid)

    statuses = {(await client.post(url, json=body(cid))).status_code for _ in range(300)}

    assert statuses == {202}
    assert len(publisher.messages) == 300


async def test_over_the_per_correlation_id_limit_is_429_with_retry_after(
    make_client: Callable[..., httpx.AsyncClient],
    make_settings: Callable[..., GatewaySettings],
    publisher: Any,
    tokens: CallbackTokens,
    cid: str,
) -> None:
    settings = make_settings(
        gateway_rate_limit_per_correlation_id=0.01,
        gateway_rate_limit_per_correlation_id_burst=2,
    )
    async with make_client(publisher, gateway_settings=settings) as http:
        url = tokens.callback_url("http://gateway", cid)
        answers = [await http.post(url, json=body(cid)) for _ in range(3)]
        other = await http.post(
            tokens.callback_url("http://gateway", f"{cid}-2"), json=body(f"{cid}-2")
        )

    assert [answer.status_code for answer in answers] == [202, 202, 429]
    limited = answers[2]
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["type"].endswith("rate-limited")
    assert 90 <= int(limited.headers["retry-after"]) <= 100
    assert other.status_code == 202
    assert len(publisher.messages) == 3


async def test_forged_callbacks_do_not_spend_a_tasks_allowance(
    make_client: Callable[..., httpx.AsyncClient],
    make_settings: Callable[..., GatewaySettings],
    publisher: Any,
    tokens: CallbackTokens,
    cid: str,
) -> None:
    settings = make_settings(
        gateway_rate_limit_per_correlation_id=0.01,
        gateway_rate_limit_per_correlation_id_burst=1,
    )
    async with make_client(publisher, gateway_settings=settings) as http:
        forged = [
            (
                await http.post(callback_url("http://gateway", cid, "k.x"), json=body(cid))
            ).status_code
            for _ in range(5)
        ]
        genuine = await http.post(tokens.callback_url("http://gateway", cid), json=body(cid))

    assert set(forged) == {401}
    assert genuine.status_code == 202


async def test_over_the_per_client_limit_is_429_even_before_the_token_is_checked(
    make_client: Callable[..., httpx.AsyncClient],
    make_settings: Callable[..., GatewaySettings],
    publisher: Any,
    tokens: CallbackTokens,
    cid: str,
) -> None:
    settings = make_settings(
        gateway_rate_limit_per_client=0.5, gateway_rate_limit_per_client_burst=2
    )
    async with make_client(publisher, gateway_settings=settings) as http:
        first = await http.post(tokens.callback_url("http://gateway", cid), json=body(cid))
        forged = await http.post(callback_url("http://gateway", cid, "k.x"), json=body(cid))
        limited = await http.post(tokens.callback_url("http://gateway", cid), json=body(cid))

    assert (first.status_code, forged.status_code, limited.status_code) == (202, 401, 429)
    assert limited.headers["retry-after"] == "2"
    assert "client" in limited.json()["detail"]
    assert len(publisher.messages) == 1


async def test_unsigned_callbacks_to_a_signing_endpoint_do_not_spend_its_allowance(
    make_client: Callable[..., httpx.AsyncClient],
    make_settings: Callable[..., GatewaySettings],
    publisher: Any,
    tokens: CallbackTokens,
    cid: str,
) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    settings = make_settings(
        gateway_signing_secrets=f"video:{secret}",
        gateway_rate_limit_per_correlation_id=0.01,
        gateway_rate_limit_per_correlation_id_burst=1,
    )
    url = tokens.callback_url("http://gateway", cid, endpoint="video")
    content = json.dumps(body(cid))
    now = datetime.now(tz=UTC)
    signed = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, content),
    }
    async with make_client(publisher, gateway_settings=settings) as http:
        unsigned = [
            (await http.post(url, content=content, headers={"content-type": "application/json"}))
            for _ in range(3)
        ]
        genuine = await http.post(url, content=content, headers=signed)

    assert {response.status_code for response in unsigned} == {401}
    assert genuine.status_code == 202
