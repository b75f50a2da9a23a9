"""schemathesis against the served OpenAPI document: no 5xx, and every answer as documented."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from webhook_tasks_contracts import CallbackTokens
from webhook_tasks_gateway import GatewaySettings, create_app
from webhook_tasks_gateway.openapi import CALLBACK_PATH, OPENAPI_PATH
from webhook_tasks_runtime.kafka import OutgoingMessage

# Positive and negative cases together; CI must run at least this many.
MIN_CASES = 1000
# not_a_server_error is asserted in the test: a 503 is right when, and only when, Kafka refused.
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class FlakyPublisher:
    """Take most messages; refuse some, so the 503 answer is exercised too."""

    def __init__(self) -> None:
        self.taken = 0
        self.refused = 0

    async def publish(self, message: OutgoingMessage) -> None:
        if len(message.value) % 5 == 0:
            self.refused += 1
            raise ConnectionError("broker away")
        self.taken += 1


SIGNING_ENDPOINT = "signed"
SIGNING_SECRET = "whsec_" + "c2lnbmluZy1zZWNyZXQtb2YtdGhlLWZ1enotdGVzdA=="

# What senders get wrong besides the body: None keeps the media type schemathesis chose.
MEDIA_TYPES = st.sampled_from([None, None, None, "text/plain", "application/cloudevents+json"])


def aim_at_the_gateway(
    case: schemathesis.Case[Any], tokens: CallbackTokens, media_type: str | None
) -> None:
    """Give most generated callbacks a URL whose token verifies, so bodies get validated."""
    if case.operation.path != CALLBACK_PATH:
        return
    if media_type is not None:
        headers = CaseInsensitiveDict(case.headers)
        headers["Content-Type"] = media_type
        case.headers = headers
    parameters = case.path_parameters or {}
    body = case.body
    # Path parameters are held percent-encoded, as sent; the token covers the decoded id.
    if isinstance(body, dict) and isinstance(claimed := body.get("correlationId"), str):
        correlation_id = claimed
        parameters["correlation_id"] = quote(correlation_id, safe="")
    else:
        correlation_id = unquote(str(parameters.get("correlation_id", "")))
    forged = str(parameters.get("token", ""))
    # Keep some forged tokens, bind some to an endpoint that signs, chosen by the generated
    # data so that a failure replays.
    choice = len(forged) % 4
    if choice == 2:
        parameters["token"] = tokens.mint(correlation_id, endpoint=SIGNING_ENDPOINT)
    elif choice != 1:
        parameters["token"] = tokens.mint(correlation_id)
    case.path_parameters = parameters


def test_generated_requests_get_documented_answers_and_never_a_5xx(
    make_settings: Callable[..., GatewaySettings], tokens: CallbackTokens
) -> None:
    publisher = FlakyPublisher()
    settings = make_settings(
        gateway_max_body_bytes=400,
        gateway_signing_secrets=f"{SIGNING_ENDPOINT}:{SIGNING_SECRET}",
        # Generation repeats small ids often enough for this to answer 429 now and then.
        gateway_rate_limit_per_correlation_id=0.1,
        gateway_rate_limit_per_correlation_id_burst=150,
    )
    app = create_app(settings, publisher, tokens)
    schema = schemathesis.openapi.from_asgi(OPENAPI_PATH, app)
    cases = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    statuses: dict[int, int] = {}

    # schemathesis types an ASGI app's messages as dict, Starlette as MutableMapping.
    with asgi.get_client(app) as session:  # type: ignore[arg-type]

        @hypothesis.settings(
            max_examples=MIN_CASES + 100,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=cases, media_type=MEDIA_TYPES)
        def run(case: Any, media_type: str | None) -> None:
            aim_at_the_gateway(case, tokens, media_type)
            refused = publisher.refused
            response = case.call_and_validate(session=session, checks=CHECKS)
            if response.status_code >= 500:
                assert response.status_code == 503, response.text
                assert publisher.refused == refused + 1, response.text
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        run()

    assert sum(statuses.values()) >= MIN_CASES, statuses
    # The run reached every kind of answer, not only the cheapest refusal.
    assert {202, 400, 401, 404, 413, 415, 503} <= set(statuses), statuses
    assert publisher.taken > 0
    assert publisher.refused > 0
