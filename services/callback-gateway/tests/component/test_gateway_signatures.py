"""Signed callbacks over HTTP: endpoint-bound URLs require a Standard Webhooks signature."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from webhook_tasks_contracts import CallbackReceived, CallbackTokens
from webhook_tasks_gateway import GatewaySettings

PROBLEM = "application/problem+json"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def secrets() -> dict[str, str]:
    return {"current": new_secret(), "previous": new_secret(), "stranger": new_secret()}


@pytest.fixture
async def http(
    make_client: Callable[..., httpx.AsyncClient],
    make_settings: Callable[..., GatewaySettings],
    publisher: Any,
    secrets: dict[str, str],
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        gateway_signing_secrets=f"video:{secrets['current']},video:{secrets['previous']}",
        gateway_signature_tolerance_seconds=60,
    )
    async with make_client(publisher, gateway_settings=settings) as client:
        yield client


def body_of(cid: str) -> bytes:
    return json.dumps(
        {"correlationId": cid, "status": "success", "resultUrl": "https://cdn.example.com/a.mp4"}
    ).encode()


def signed(
    secret: str, body: bytes, *, msg_id: str = "msg_1", at: float | None = None
) -> dict[str, str]:
    """Headers of `body` signed by the official standardwebhooks library."""
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


def video_url(tokens: CallbackTokens, cid: str) -> str:
    return tokens.callback_url("http://gateway", cid, endpoint="video")


def refused_as_unsigned(response: httpx.Response, publisher: Any, secrets: dict[str, str]) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith("invalid-signature")
    assert publisher.messages == []
    for secret in secrets.values():
        assert secret.removeprefix("whsec_") not in response.text


async def test_a_callback_signed_by_the_official_library_is_accepted(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
) -> None:
    body = body_of(cid)

    response = await http.post(
        video_url(tokens, cid),
        content=body,
        headers=signed(secrets["current"], body, msg_id="msg_42"),
    )

    assert response.status_code == 202, response.text
    event = CallbackReceived.model_validate_json(publisher.messages[0].value)
    assert event.delivery_id == "msg_42"
    assert event.result_url == "https://cdn.example.com/a.mp4"


async def test_the_previous_secret_still_verifies_during_rotation(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
) -> None:
    body = body_of(cid)

    response = await http.post(
        video_url(tokens, cid), content=body, headers=signed(secrets["previous"], body)
    )

    assert response.status_code == 202, response.text
    assert len(publisher.messages) == 1


async def test_an_unsigned_callback_is_refused_before_its_body_is_read(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
) -> None:
    response = await http.post(
        video_url(tokens, cid), content=b"not json", headers={"content-type": "text/plain"}
    )

    refused_as_unsigned(response, publisher, secrets)
    assert "requires webhook-id" in response.json()["detail"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda body, headers, secrets: (body, signed(secrets["stranger"], body)),
            id="other-secret",
        ),
        pytest.param(
            lambda body, headers, secrets: (body.replace(b"a.mp4", b"b.mp4"), headers),
            id="body-changed",
        ),
        pytest.param(
            lambda body, headers, secrets: (body, {**headers, "webhook-id": "msg_2"}),
            id="id-changed",
        ),
        pytest.param(
            lambda body, headers, secrets: (
                body,
                {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)},
            ),
            id="timestamp-changed",
        ),
        pytest.param(
            lambda body, headers, secrets: (
                body,
                signed(secrets["current"], body, at=time.time() - 120),
            ),
            id="too-old",
        ),
        pytest.param(
            lambda body, headers, secrets: (
                body,
                signed(secrets["current"], body, at=time.time() + 120),
            ),
            id="too-new",
        ),
    ],
)
async def test_a_wrong_or_stale_signature_is_refused(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
    tamper: Callable[..., tuple[bytes, dict[str, str]]],
) -> None:
    body, headers = tamper(body_of(cid), signed(secrets["current"], body_of(cid)), secrets)

    response = await http.post(video_url(tokens, cid), content=body, headers=headers)

    refused_as_unsigned(response, publisher, secrets)


async def test_the_endpoint_cannot_be_stripped_from_the_url_to_skip_the_signature(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
) -> None:
    key_id, _, rest = tokens.mint(cid, endpoint="video").partition(".")
    stripped = f"http://gateway/v1/callbacks/{cid}/{key_id}.{rest.partition('.')[2]}"

    response = await http.post(
        stripped, content=body_of(cid), headers={"content-type": "application/json"}
    )

    assert response.status_code == 401
    assert response.json()["type"].endswith("invalid-callback-token")
    assert publisher.messages == []


async def test_a_url_bound_to_no_endpoint_needs_no_signature(
    http: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
) -> None:
    response = await http.post(
        tokens.callback_url("http://gateway", cid),
        content=body_of(cid),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 202


async def test_an_endpoint_without_configured_secrets_needs_no_signature(
    http: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
) -> None:
    response = await http.post(
        tokens.callback_url("http://gateway", cid, endpoint="transcriber"),
        content=body_of(cid),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 202


async def test_the_signature_is_checked_before_the_body_is_validated(
    http: httpx.AsyncClient,
    publisher: Any,
    tokens: CallbackTokens,
    secrets: dict[str, str],
    cid: str,
) -> None:
    body = b'{"correlationId": 5}'
    headers = signed(secrets["stranger"], body)

    response = await http.post(video_url(tokens, cid), content=body, headers=headers)

    refused_as_unsigned(response, publisher, secrets)
