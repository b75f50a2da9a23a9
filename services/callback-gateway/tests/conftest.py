"""Fixtures of the gateway tests: settings, a token ring, and publishers that record or fail."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from webhook_tasks_contracts import CallbackTokens, parse_callback_keys
from webhook_tasks_gateway import GatewaySettings, create_app
from webhook_tasks_gateway.publishing import CallbackPublisher
from webhook_tasks_runtime.kafka import OutgoingMessage


class RecordingPublisher:
    """Keep every published message; or raise, or never return, when told to."""

    def __init__(self, *, fail_with: BaseException | None = None, hang: bool = False) -> None:
        self.messages: list[OutgoingMessage] = []
        self.fail_with = fail_with
        self.hang = hang

    async def publish(self, message: OutgoingMessage) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.messages.append(message)


@pytest.fixture
def key_spec() -> str:
    """Two fresh keys, newest first, as CALLBACK_TOKEN_KEYS spells them."""
    return f"current:base64:{_b64()},previous:base64:{_b64()}"


def _b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def tokens(key_spec: str) -> CallbackTokens:
    return CallbackTokens(parse_callback_keys(key_spec))


@pytest.fixture
def make_settings(key_spec: str) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": "127.0.0.1:9",
            "callback_token_keys": key_spec,
            "topic_prefix": f"test-{uuid.uuid4().hex[:12]}",
            "environment": "test",
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., GatewaySettings]) -> GatewaySettings:
    return make_settings()


@pytest.fixture
def cid() -> str:
    """A correlation id no other test uses."""
    return f"corr-{uuid.uuid4()}"


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def publisher_class() -> type[RecordingPublisher]:
    return RecordingPublisher


@pytest.fixture
def make_client(
    settings: GatewaySettings, tokens: CallbackTokens
) -> Callable[..., httpx.AsyncClient]:
    """Return a factory of in-process HTTP clients of a gateway on a given publisher."""

    def make(
        publisher: CallbackPublisher, *, gateway_settings: GatewaySettings | None = None, **app: Any
    ) -> httpx.AsyncClient:
        gateway = create_app(gateway_settings or settings, publisher, tokens, **app)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
        )

    return make


@pytest.fixture
async def client(
    make_client: Callable[..., httpx.AsyncClient], publisher: RecordingPublisher
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(publisher) as http:
        yield http
