"""The gateway app over HTTP, in-process, on publishers that record, fail or hang."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from pydantic import SecretStr, ValidationError
from webhook_tasks_contracts import CallbackReceived, CallbackTokens, callback_url
from webhook_tasks_gateway import GatewaySettings
from webhook_tasks_runtime.kafka import OutgoingMessage
from webhook_tasks_runtime.pytest_plugin import service_logs

PROBLEM = "application/problem+json"


def success_body(correlation_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "correlationId": correlation_id,
        "status": "success",
        "resultUrl": "https://cdn.example.com/result.mp4",
        "metadata": {"duration": 12, "format": "mp4"},
        **extra,
    }


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"]
    assert problem["title"]
    assert problem["detail"]
    return problem


class TestAccepted:
    async def test_success_callback_is_published_keyed_by_correlation_id(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        settings: GatewaySettings,
        cid: str,
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            json=success_body(cid),
            headers={"webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"},
        )

        assert response.status_code == 202
        assert response.json() == {"status": "accepted", "correlationId": cid}
        [message] = publisher.messages
        assert message.topic == settings.topics.callback_received
        assert message.key == cid
        event = CallbackReceived.model_validate_json(message.value)
        assert event.correlation_id == cid
        assert event.status == "success"
        assert event.result_url == "https://cdn.example.com/result.mp4"
        assert event.metadata == {"duration": 12, "format": "mp4"}
        assert event.delivery_id == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
        assert event.error is None
        assert event.progress is None

    async def test_error_callback_carries_the_reason(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = {"correlationId": cid, "status": "error", "error": "GPU quota exhausted"}

        response = await client.post(tokens.callback_url("http://gateway", cid), json=body)

        assert response.status_code == 202
        event = CallbackReceived.model_validate_json(publisher.messages[0].value)
        assert (event.status, event.error, event.delivery_id) == (
            "error",
            "GPU quota exhausted",
            None,
        )

    async def test_progress_callback_carries_progress_and_message(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = {
            "correlationId": cid,
            "status": "progress",
            "progress": 42.5,
            "message": "rendering",
        }

        response = await client.post(tokens.callback_url("http://gateway", cid), json=body)

        assert response.status_code == 202
        event = CallbackReceived.model_validate_json(publisher.messages[0].value)
        assert (event.status, event.progress, event.message) == ("progress", 42.5, "rendering")

    async def test_correlation_id_needing_percent_encoding_round_trips(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens
    ) -> None:
        cid = f"task {uuid.uuid4()} é+%?#"

        response = await client.post(
            tokens.callback_url("http://gateway", cid), json=success_body(cid)
        )

        assert response.status_code == 202
        assert publisher.messages[0].key == cid

    async def test_each_delivery_gets_a_fresh_event_id(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        url = tokens.callback_url("http://gateway", cid)
        for _ in range(2):
            assert (await client.post(url, json=success_body(cid))).status_code == 202

        ids = {CallbackReceived.model_validate_json(m.value).event_id for m in publisher.messages}
        assert len(ids) == 2

    async def test_token_minted_under_an_older_key_still_verifies(
        self, client: httpx.AsyncClient, publisher: Any, key_spec: str, cid: str
    ) -> None:
        from webhook_tasks_contracts import parse_callback_keys

        previous_only = CallbackTokens(parse_callback_keys(key_spec)[1:])

        response = await client.post(
            previous_only.callback_url("http://gateway", cid), json=success_body(cid)
        )

        assert response.status_code == 202
        assert len(publisher.messages) == 1

    @pytest.mark.parametrize(
        "content_type",
        [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/webhook+json",
        ],
    )
    async def test_json_media_types_are_accepted(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str, content_type: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=json.dumps(success_body(cid)),
            headers={"content-type": content_type},
        )

        assert response.status_code == 202


class TestUnauthorized:
    @pytest.mark.parametrize(
        "forge",
        [
            pytest.param(lambda tokens, cid: "current." + "A" * 43, id="forged-mac"),
            pytest.param(
                lambda tokens, cid: tokens.mint(f"{cid}-other"), id="other-correlation-id"
            ),
            pytest.param(
                lambda tokens, cid: "unknown." + tokens.mint(cid).partition(".")[2],
                id="unknown-key-id",
            ),
            pytest.param(lambda tokens, cid: tokens.mint(cid).replace(".", ""), id="no-key-id"),
        ],
    )
    async def test_token_not_minted_for_this_correlation_id_is_refused(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        forge: Callable[[CallbackTokens, str], str],
    ) -> None:
        token = forge(tokens, cid)

        response = await client.post(
            callback_url("http://gateway", cid, token), json=success_body(cid)
        )

        problem = assert_problem(response, 401)
        assert token not in response.text
        assert publisher.messages == []
        assert problem["type"].endswith("invalid-callback-token")

    async def test_token_is_checked_before_the_body(
        self, client: httpx.AsyncClient, cid: str
    ) -> None:
        response = await client.post(
            callback_url("http://gateway", cid, "current.forged"),
            content=b"not json at all",
            headers={"content-type": "text/plain"},
        )

        assert_problem(response, 401)


class TestBadInput:
    async def test_non_json_content_type_is_415(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=json.dumps(success_body(cid)),
            headers={"content-type": "text/plain"},
        )

        assert_problem(response, 415)
        assert publisher.messages == []

    @pytest.mark.parametrize("coding", ["gzip", "br", "deflate"])
    async def test_a_compressed_body_is_415_naming_the_coding(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        coding: str,
    ) -> None:
        body = json.dumps(success_body(cid)).encode()
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=gzip.compress(body) if coding == "gzip" else body,
            headers={"content-type": "application/json", "content-encoding": coding},
        )

        problem = assert_problem(response, 415)
        assert f"Content-Encoding '{coding}' is not accepted" in problem["detail"]
        assert publisher.messages == []

    async def test_a_refusal_of_a_request_expecting_100_continue_closes_the_connection(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        refused = await client.post(
            callback_url("http://gateway", cid, "current.forged"),
            json=success_body(cid),
            headers={"expect": "100-continue"},
        )
        accepted = await client.post(
            tokens.callback_url("http://gateway", cid),
            json=success_body(cid),
            headers={"expect": "100-continue"},
        )

        assert_problem(refused, 401)
        assert refused.headers["connection"] == "close"
        assert accepted.status_code == 202
        assert "connection" not in accepted.headers

    async def test_missing_content_type_is_415(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid), content=json.dumps(success_body(cid))
        )

        assert_problem(response, 415)

    async def test_unparseable_json_is_400(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=b'{"correlationId": ',
            headers={"content-type": "application/json"},
        )

        problem = assert_problem(response, 400)
        assert "Invalid JSON" in problem["detail"]
        assert problem["errors"][0]["pointer"] == "#"

    async def test_missing_field_is_named(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid), json={"status": "success"}
        )

        problem = assert_problem(response, 400)
        assert "correlationId" in problem["detail"]
        assert problem["errors"] == [
            {"pointer": "#/correlationId", "field": "correlationId", "detail": "Field required"}
        ]
        assert publisher.messages == []

    async def test_missing_status_is_named(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid), json={"correlationId": cid}
        )

        problem = assert_problem(response, 400)
        assert [error["field"] for error in problem["errors"]] == ["status"]

    async def test_every_invalid_field_is_listed(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        body = success_body(cid, resultUrl="ftp://example.com/x", metadata=["not", "an", "object"])

        response = await client.post(tokens.callback_url("http://gateway", cid), json=body)

        problem = assert_problem(response, 400)
        assert sorted(error["pointer"] for error in problem["errors"]) == [
            "#/metadata",
            "#/resultUrl",
        ]

    async def test_text_the_database_could_not_store_is_400_naming_the_field(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = success_body(cid, metadata={"title": "bad \x00 byte"})

        response = await client.post(tokens.callback_url("http://gateway", cid), json=body)

        problem = assert_problem(response, 400)
        assert [error["field"] for error in problem["errors"]] == ["metadata"]
        assert "NUL" in problem["errors"][0]["detail"]
        assert publisher.messages == []

    @pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
    async def test_a_number_json_cannot_hold_is_400_naming_the_field(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        number: bytes,
    ) -> None:
        body = json.dumps(success_body(cid, metadata={"score": 0})).encode()

        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=body.replace(b'"score": 0', b'"score": ' + number),
            headers={"content-type": "application/json"},
        )

        problem = assert_problem(response, 400)
        assert [error["field"] for error in problem["errors"]] == ["metadata.score"]
        assert publisher.messages == []

    async def test_correlation_id_differing_from_the_url_is_400(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid), json=success_body(f"{cid}-other")
        )

        problem = assert_problem(response, 400)
        assert problem["errors"][0]["field"] == "correlationId"
        assert publisher.messages == []

    async def test_overlong_webhook_id_is_400(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            json=success_body(cid),
            headers={"webhook-id": "m" * 201},
        )

        assert_problem(response, 400)
        assert publisher.messages == []


class TestTooLarge:
    @pytest.fixture
    async def small_client(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        async with make_client(
            publisher, gateway_settings=make_settings(gateway_max_body_bytes=300)
        ) as http:
            yield http

    async def test_declared_length_over_the_limit_is_413(
        self, small_client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = success_body(cid, metadata={"padding": "x" * 300})

        response = await small_client.post(tokens.callback_url("http://gateway", cid), json=body)

        assert_problem(response, 413)
        assert publisher.messages == []

    async def test_streamed_body_over_the_limit_is_413(
        self, small_client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length: only counting the stream can catch it.
            yield json.dumps(success_body(cid))[:-1].encode()
            for _ in range(10):
                yield b' ,"pad": "' + b"x" * 50 + b'"'
            yield b"}"

        response = await small_client.post(
            tokens.callback_url("http://gateway", cid),
            content=chunks(),
            headers={"content-type": "application/json"},
        )

        assert "content-length" not in response.request.headers
        assert_problem(response, 413)
        assert publisher.messages == []

    async def test_body_at_the_limit_is_accepted(
        self, small_client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        raw = json.dumps(success_body(cid, metadata={})).encode()
        raw = raw[:-1] + b" " * (300 - len(raw)) + b"}"

        response = await small_client.post(
            tokens.callback_url("http://gateway", cid),
            content=raw,
            headers={"content-type": "application/json"},
        )

        assert len(raw) == 300
        assert response.status_code == 202

    async def test_body_at_the_default_limit_is_accepted(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        raw = json.dumps(success_body(cid, metadata={"padding": ""})).encode()
        raw = raw.replace(b'"padding": ""', b'"padding": "%s"' % (b"x" * (1024 * 1024 - len(raw))))

        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=raw,
            headers={"content-type": "application/json"},
        )

        assert len(raw) == 1024 * 1024
        assert response.status_code == 202, response.text
        [message] = publisher.messages
        assert len(message.value) > 1024 * 1024

    async def test_event_over_the_event_limit_is_413(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        gateway = make_settings(gateway_max_event_bytes=1024)
        body = success_body(cid, metadata={"padding": "x" * 1024})

        async with make_client(publisher, gateway_settings=gateway) as http:
            response = await http.post(tokens.callback_url("http://gateway", cid), json=body)

        assert_problem(response, 413)
        assert publisher.messages == []

    async def test_message_kafka_refuses_as_too_large_is_413(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        refusing = publisher_class(fail_with=MessageSizeTooLargeError())

        async with make_client(refusing) as http:
            response = await http.post(
                tokens.callback_url("http://gateway", cid), json=success_body(cid)
            )

        assert_problem(response, 413)


class TestKafkaUnavailable:
    async def test_publish_failure_is_503_with_retry_after(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        failing = publisher_class(fail_with=RuntimeError("broker kafka-0.internal:9092 is gone"))
        gateway = make_settings(gateway_retry_after_seconds=7)

        async with make_client(failing, gateway_settings=gateway) as http:
            response = await http.post(
                tokens.callback_url("http://gateway", cid), json=success_body(cid)
            )

        assert_problem(response, 503)
        assert response.headers["retry-after"] == "7"
        assert "kafka-0" not in response.text

    async def test_publish_that_does_not_return_in_time_is_503(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        hanging = publisher_class(hang=True)
        gateway = make_settings(gateway_publish_timeout_seconds=0.05)

        async with make_client(hanging, gateway_settings=gateway) as http:
            response = await http.post(
                tokens.callback_url("http://gateway", cid), json=success_body(cid)
            )

        assert_problem(response, 503)
        assert response.headers["retry-after"] == "5"

    async def test_a_request_cancelled_while_publishing_stays_cancelled(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        # Shutdown cancels in-flight requests: that is no publish timeout, and no 503.
        hanging = publisher_class(hang=True)
        gateway = make_settings(gateway_publish_timeout_seconds=30)

        async with make_client(hanging, gateway_settings=gateway) as http:
            request = asyncio.create_task(
                http.post(tokens.callback_url("http://gateway", cid), json=success_body(cid))
            )
            await asyncio.sleep(0.05)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

        assert hanging.messages == []


class GatedPublisher:
    """Keep each message; acknowledge only once the test opens the gate."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []
        self.gate = asyncio.Event()
        self.waiting = 0

    async def publish(self, message: OutgoingMessage) -> None:
        self.waiting += 1
        await self.gate.wait()
        self.messages.append(message)


class TestBytesInFlight:
    async def test_past_the_budget_a_callback_gets_503_until_those_in_flight_are_stored(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        tokens: CallbackTokens,
    ) -> None:
        # Each callback holds its Content-Length until Kafka has it: two fit, not three.
        ids = [f"corr-{uuid.uuid4()}" for _ in range(4)]
        bodies = [json.dumps(success_body(cid, metadata={"log": "x" * 800})) for cid in ids]
        gated = GatedPublisher()
        gateway = make_settings(
            gateway_max_body_bytes=1000, gateway_max_bytes_in_flight=2 * len(bodies[0]) + 10
        )

        async def post(index: int) -> httpx.Response:
            return await http.post(
                tokens.callback_url("http://gateway", ids[index]),
                content=bodies[index],
                headers={"content-type": "application/json"},
            )

        async with make_client(gated, gateway_settings=gateway) as http:
            first = [asyncio.create_task(post(index)) for index in (0, 1)]
            while gated.waiting < 2:
                await asyncio.sleep(0.01)
            refused = await post(2)
            gated.gate.set()
            stored = [await each for each in first]
            after = await post(3)

        problem = assert_problem(refused, 503)
        assert problem["type"].endswith("gateway-busy")
        assert refused.headers["retry-after"] == "5"
        assert [response.status_code for response in (*stored, after)] == [202, 202, 202]
        assert len(gated.messages) == 3

    async def test_a_small_body_sent_in_chunks_holds_only_its_own_bytes(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        tokens: CallbackTokens,
    ) -> None:
        # Streams (Go readers, Java publishers, Node streams) send no Content-Length.
        ids = [f"corr-{uuid.uuid4()}" for _ in range(5)]
        gated = GatedPublisher()
        gateway = make_settings(gateway_max_body_bytes=1000, gateway_max_bytes_in_flight=1000)

        async def post(cid: str) -> httpx.Response:
            body = json.dumps(success_body(cid)).encode()

            async def chunks() -> AsyncIterator[bytes]:
                yield body[:20]
                yield body[20:]

            return await http.post(
                tokens.callback_url("http://gateway", cid),
                content=chunks(),
                headers={"content-type": "application/json"},
            )

        async with make_client(gated, gateway_settings=gateway) as http:
            posts = [asyncio.create_task(post(cid)) for cid in ids]
            async with asyncio.timeout(10):
                while gated.waiting + sum(each.done() for each in posts) < len(ids):
                    await asyncio.sleep(0.01)
            gated.gate.set()
            answers = [await each for each in posts]

        assert [answer.status_code for answer in answers] == [202] * 5

    async def test_bytes_held_by_a_refused_callback_are_given_back(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher_class: Any,
        tokens: CallbackTokens,
    ) -> None:
        # Kafka does not answer in time: 503, and the bytes are free for the next callback.
        hanging = publisher_class(hang=True)
        # Room for one such callback at a time (about 900 bytes), not two.
        gateway = make_settings(
            gateway_max_body_bytes=1000,
            gateway_max_bytes_in_flight=1000,
            gateway_publish_timeout_seconds=0.05,
        )

        async with make_client(hanging, gateway_settings=gateway) as http:
            statuses = []
            for _ in range(3):
                cid = f"corr-{uuid.uuid4()}"
                response = await http.post(
                    tokens.callback_url("http://gateway", cid),
                    json=success_body(cid, metadata={"log": "x" * 800}),
                )
                statuses.append(assert_problem(response, 503)["type"])

        assert all(kind.endswith("callback-not-stored") for kind in statuses)

    def test_the_budget_takes_at_least_one_callback_at_the_body_limit(
        self, make_settings: Callable[..., GatewaySettings]
    ) -> None:
        with pytest.raises(ValidationError, match="at least GATEWAY_MAX_BODY_BYTES"):
            make_settings(gateway_max_body_bytes=2048, gateway_max_bytes_in_flight=1024)


class TestRouting:
    @pytest.mark.parametrize(
        "path", ["/", "/v1/callbacks", "/v1/callbacks/only-an-id", "/v1/callbacks/a/b/c", "/nope"]
    )
    async def test_unknown_path_is_404_problem(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.post(path, json={})

        problem = assert_problem(response, 404)
        assert problem["type"] == "about:blank"
        assert problem["title"] == "Not Found"

    async def test_a_trailing_slash_is_404_never_a_redirect_echoing_the_token(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        url = tokens.callback_url("http://gateway", cid) + "/"

        callback = await client.post(url, json=success_body(cid))
        probe = await client.get("/healthz/")

        assert_problem(callback, 404)
        assert_problem(probe, 404)
        assert "location" not in callback.headers
        assert tokens.mint(cid).partition(".")[2] not in callback.text

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
    async def test_other_methods_on_the_callback_path_are_405(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str, method: str
    ) -> None:
        url = tokens.callback_url("http://gateway", cid)

        response = await client.request(method, url)

        assert_problem(response, 405)
        assert response.headers["allow"] == "POST"
        assert tokens.mint(cid) not in response.text


class TestCors:
    def preflight(self, origin: str, method: str = "POST") -> dict[str, str]:
        return {
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type",
        }

    async def test_preflight_from_a_configured_origin_allows_post_only(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        gateway = make_settings(gateway_cors_allow_origins="https://app.example, https://b.example")

        async with make_client(publisher, gateway_settings=gateway) as http:
            response = await http.options(
                tokens.callback_url("http://gateway", cid),
                headers=self.preflight("https://app.example"),
            )

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert response.headers["access-control-allow-methods"] == "POST"

    async def test_preflight_for_another_method_is_refused(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        gateway = make_settings(gateway_cors_allow_origins="https://app.example")

        async with make_client(publisher, gateway_settings=gateway) as http:
            response = await http.options(
                tokens.callback_url("http://gateway", cid),
                headers=self.preflight("https://app.example", method="PUT"),
            )

        problem = assert_problem(response, 403)
        assert "method" in problem["detail"]

    async def test_no_origin_is_allowed_unless_configured(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str
    ) -> None:
        response = await client.options(
            tokens.callback_url("http://gateway", cid),
            headers=self.preflight("https://app.example"),
        )

        problem = assert_problem(response, 403)
        assert "origin" in problem["detail"]
        assert "access-control-allow-origin" not in response.headers

    async def test_wildcard_allows_any_origin(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        async with make_client(
            publisher, gateway_settings=make_settings(gateway_cors_allow_origins="*")
        ) as http:
            preflight = await http.options(
                tokens.callback_url("http://gateway", cid),
                headers=self.preflight("https://x.example"),
            )
            post = await http.post(
                tokens.callback_url("http://gateway", cid),
                json=success_body(cid),
                headers={"origin": "https://x.example"},
            )

        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert post.status_code == 202
        assert post.headers["access-control-allow-origin"] == "*"

    async def test_a_browser_may_read_the_retry_after_of_a_503(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        gateway = make_settings(gateway_cors_allow_origins="https://app.example")
        failing = publisher_class(fail_with=RuntimeError("Kafka is down"))

        async with make_client(failing, gateway_settings=gateway) as http:
            response = await post_from_the_app(http, tokens, cid)

        assert_problem(response, 503)
        assert_retry_after_exposed(response)

    async def test_a_browser_may_read_the_retry_after_of_a_429(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        gateway = make_settings(
            gateway_cors_allow_origins="https://app.example",
            gateway_rate_limit_per_client=0.01,
            gateway_rate_limit_per_client_burst=1,
        )

        async with make_client(publisher, gateway_settings=gateway) as http:
            for _ in range(2):
                response = await post_from_the_app(http, tokens, cid)

        assert_problem(response, 429)
        assert_retry_after_exposed(response)


async def post_from_the_app(
    http: httpx.AsyncClient, tokens: CallbackTokens, cid: str
) -> httpx.Response:
    """POST a success callback as a browser on the allowed origin would."""
    return await http.post(
        tokens.callback_url("http://gateway", cid),
        json=success_body(cid),
        headers={"origin": "https://app.example"},
    )


def assert_retry_after_exposed(response: httpx.Response) -> None:
    assert response.headers["retry-after"]
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-expose-headers"].lower() == "retry-after"


class TestProbes:
    async def test_healthz_answers_while_the_process_lives(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")

        assert response.status_code == 200

    @pytest.mark.parametrize(("ready", "status"), [(True, 200), (False, 503)])
    async def test_readyz_follows_the_readiness_probe(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        publisher: Any,
        ready: bool,
        status: int,
    ) -> None:
        class Probe:
            async def is_ready(self) -> bool:
                return ready

        async with make_client(publisher, readiness=Probe()) as http:
            response = await http.get("/readyz")

        assert response.status_code == status

    async def test_readyz_asks_a_publisher_that_can_answer(
        self, make_client: Callable[..., httpx.AsyncClient], publisher_class: Any
    ) -> None:
        class NotReadyPublisher(publisher_class):  # type: ignore[misc]  # a fixture's class
            async def is_ready(self) -> bool:
                return False

        async with make_client(NotReadyPublisher()) as http:
            response = await http.get("/readyz")

        assert_problem(response, 503)


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Log as the service does (JSON lines); return a reader of the records written."""
    with service_logs("callback-gateway", level="DEBUG") as read:
        yield read


class TestLogs:
    async def test_callbacks_are_logged_with_the_correlation_id_never_the_token(
        self,
        client: httpx.AsyncClient,
        tokens: CallbackTokens,
        cid: str,
        json_logs: Callable[[], list[dict[str, Any]]],
    ) -> None:
        forged = f"current.{uuid.uuid4().hex}"

        await client.post(tokens.callback_url("http://gateway", cid), json=success_body(cid))
        await client.post(callback_url("http://gateway", cid, forged), json=success_body(cid))
        await client.post(
            tokens.callback_url("http://gateway", cid),
            content=b"{",
            headers={"content-type": "application/json"},
        )

        records = [r for r in json_logs() if r["logger"].startswith("webhook_tasks_gateway")]
        assert [(r["message"], r["level"], r.get("http_status")) for r in records] == [
            ("callback accepted", "debug", None),
            ("callback refused", "info", 401),
            ("callback refused", "info", 400),
        ]
        assert {r["correlation_id"] for r in records} == {cid}
        assert {r["service"] for r in records} == {"callback-gateway"}
        written = json.dumps(records)
        assert tokens.mint(cid).partition(".")[2] not in written
        assert forged.partition(".")[2] not in written

    async def test_unprintable_correlation_id_is_logged_on_one_line(
        self,
        client: httpx.AsyncClient,
        json_logs: Callable[[], list[dict[str, Any]]],
    ) -> None:
        response = await client.post(
            callback_url("http://gateway", "evil\nlevel=error fake", "current.x"), json={}
        )

        assert response.status_code == 401
        [record] = [r for r in json_logs() if r["logger"].startswith("webhook_tasks_gateway")]
        assert "\n" not in record["correlation_id"]
        assert record["correlation_id"] == repr("evil\nlevel=error fake")


ECHOED = "sk_live_4f9a8b7c6d5e"


class TestEchoedCredential:
    """A task sent with webhookAuth: an echo of it in the callback never reaches Kafka."""

    async def test_every_text_echoing_it_is_masked_before_it_is_published(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        json_logs: Callable[[], list[dict[str, Any]]],
    ) -> None:
        echoes = tokens.fingerprints.of(SecretStr(f"Bearer {ECHOED}"))
        url = tokens.callback_url("http://gateway", cid, echoes=echoes)
        body = success_body(
            cid,
            resultUrl=f"https://cdn.example.com/v.mp4?auth={ECHOED}",
            metadata={
                "request": {"headers": {"authorization": f"Bearer {ECHOED}", ECHOED: True}},
                "n": 1,
            },
        )

        accepted = await client.post(url, json=body)
        failed = await client.post(
            url, json={"correlationId": cid, "status": "error", "error": f"401 for {ECHOED}"}
        )
        progressed = await client.post(
            url,
            json={"correlationId": cid, "status": "progress", "progress": 5, "message": ECHOED},
        )

        assert [accepted.status_code, failed.status_code, progressed.status_code] == [202] * 3
        success, error, progress = (
            CallbackReceived.model_validate_json(message.value) for message in publisher.messages
        )
        assert success.result_url == "https://cdn.example.com/v.mp4?auth=**********"
        assert success.metadata == {
            "request": {"headers": {"authorization": "Bearer **********", "**********": True}},
            "n": 1,
        }
        assert error.error == "401 for **********"
        assert progress.message == "**********"
        assert not [m for m in publisher.messages if ECHOED.encode() in m.value]
        warnings = [r for r in json_logs() if r["level"] == "warning"]
        assert [r["message"] for r in warnings] == [
            "the callback echoed the task's webhookAuth; it is masked"
        ] * 3
        assert ECHOED not in json.dumps(json_logs())

    async def test_a_large_callback_is_looked_through_off_the_event_loop(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        masked_in: list[str] = []
        mask_callback = tokens.fingerprints.mask_callback

        def recording(*args: Any) -> Any:
            masked_in.append(threading.current_thread().name)
            return mask_callback(*args)

        monkeypatch.setattr(tokens.fingerprints, "mask_callback", recording)
        echoes = tokens.fingerprints.of(SecretStr(f"Bearer {ECHOED}"))
        url = tokens.callback_url("http://gateway", cid, echoes=echoes)
        thumbnail = "data:image/png;base64," + "iVBORw0K+/" * 4000
        small = success_body(cid, metadata={"note": ECHOED})
        large = success_body(cid, metadata={"thumbnail": thumbnail, "note": ECHOED})

        responses = [await client.post(url, json=body) for body in (small, large)]

        assert [response.status_code for response in responses] == [202, 202]
        main = threading.current_thread().name
        assert masked_in[0] == main, "a small callback is masked at once"
        assert masked_in[1] != main, "a large one in a worker thread"
        assert not [m for m in publisher.messages if ECHOED.encode() in m.value]

    async def test_a_callback_without_an_echo_is_published_as_sent(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        echoes = tokens.fingerprints.of(SecretStr(f"Bearer {ECHOED}"))

        response = await client.post(
            tokens.callback_url("http://gateway", cid, echoes=echoes), json=success_body(cid)
        )

        assert response.status_code == 202
        event = CallbackReceived.model_validate_json(publisher.messages[0].value)
        assert event.result_url == "https://cdn.example.com/result.mp4"
        assert event.metadata == {"duration": 12, "format": "mp4"}

    async def test_fingerprints_altered_in_the_url_make_it_a_forgery(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        echoes = tokens.fingerprints.of(SecretStr(f"Bearer {ECHOED}"))
        key_id, endpoint, _, mac = tokens.mint(cid, echoes=echoes).split(".")
        others = tokens.mint(cid, echoes=tokens.fingerprints.of(SecretStr("Bearer other-key")))
        swapped = f"{key_id}.{endpoint}.{others.split('.')[2]}.{mac}"

        response = await client.post(
            callback_url("http://gateway", cid, swapped),
            json=success_body(cid, resultUrl=f"https://cdn.example.com/v.mp4?auth={ECHOED}"),
        )

        assert response.status_code == 401
        assert publisher.messages == []
