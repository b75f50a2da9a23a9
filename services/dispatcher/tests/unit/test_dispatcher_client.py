"""The outbound request: what is sent, and how each answer is classified."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import zlib
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr
from webhook_tasks_contracts import utc_now
from webhook_tasks_dispatcher.client import (
    MAX_STORED_BODY_CHARS,
    DeliveryResult,
    OutboundRequest,
    WebhookClient,
    origin_of,
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


def client_for(handler: Callable[[httpx.Request], object], **options: int) -> Client:
    # `handler` is sync or async, as MockTransport takes either.
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


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_the_reason_says_what_to_change(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers={"location": "https://svc/elsewhere"})

    result = await client_for(handler).send("https://svc/", {}, auth=None)

    assert [request.url.path for request in seen] == ["/"]
    assert (result.outcome, result.status_code) == ("rejected", status)
    assert f"HTTP {status}, a redirect, which is not followed" in result.reason
    assert "set webhookUrl" in result.reason


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


async def test_an_auth_value_that_is_no_header_is_refused_unsent_and_unquoted() -> None:
    sent: list[httpx.Request] = []
    auth = "Bearer t\u00f6k\u00e9n-very-secret"

    result = await client_for(lambda request: sent.append(request)).send(
        "https://svc.example.com/run", {}, auth=SecretStr(auth)
    )

    assert result.outcome == "refused"
    assert result.reason.startswith("the request could not be sent: ")
    assert auth not in result.reason
    assert sent == []


async def test_a_url_no_client_can_send_to_is_refused_unsent() -> None:
    sent: list[httpx.Request] = []

    result = await client_for(lambda request: sent.append(request)).send(
        "https://svc.example.com/\x7f", {}, auth=None
    )

    assert result.outcome == "refused"
    assert result.unsendable
    assert sent == []


async def test_a_binary_answer_is_stored_without_nul_characters() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"\x00\x01gateway\x00down")

    result = await client_for(handler).send("https://svc/", {}, auth=None)

    assert result.outcome == "rejected"
    assert result.response_body is not None
    assert "\x00" not in result.response_body
    assert "gateway" in result.response_body


async def test_an_answer_echoing_the_auth_value_is_kept_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=f"you sent {request.headers['authorization']}")

    result = await client_for(handler).send("https://svc/", {}, auth=SecretStr(SECRET))

    assert result.outcome == "accepted"
    assert result.response_body is not None
    assert SECRET not in result.response_body
    assert SECRET.encode() not in result.body


@pytest.mark.parametrize(
    "echo",
    [
        "invalid token sk-live-very-secret",  # the credential without its scheme word
        json.dumps({"error": 'you sent Bearer sk/"live-0123'}),  # JSON-escaped
        "https://cdn.example.com/r?auth=Bearer%20sk%2F%22live-0123",  # %-encoded
    ],
)
async def test_an_answer_echoing_part_of_the_auth_value_is_masked(echo: str) -> None:
    secret = 'Bearer sk/"live-0123' if "live-0123" in echo else SECRET
    credential = secret.removeprefix("Bearer ")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=echo)

    result = await client_for(handler).send("https://svc/", {}, auth=SecretStr(secret))

    assert result.response_body is not None
    assert "**********" in result.response_body
    for form in (credential, json.dumps(credential)[1:-1], "sk%2F%22live"):
        assert form not in result.response_body


async def test_a_masked_json_answer_stays_json() -> None:
    answer = {"status": "error", "error": f"the token {SECRET} expired", "n": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    result = await client_for(handler).send("https://svc/", {}, auth=SecretStr(SECRET))

    assert json.loads(result.body) == {**answer, "error": "the token ********** expired"}


async def test_a_compressed_answer_is_not_inflated_past_the_cap() -> None:
    seen: list[httpx.Request] = []
    bomb = gzip.compress(b"0" * 10_000_000)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(bomb))

    result = await client_for(handler, max_response_bytes=64 * 1024).send(
        "https://svc/", {}, auth=None
    )

    assert seen[0].headers["accept-encoding"] == "identity"
    assert result.outcome == "accepted"
    assert len(bomb) < 64 * 1024
    assert result.body == b"0" * 64 * 1024
    assert result.truncated


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
    ],
)
async def test_a_compressed_answer_though_none_was_asked_for_is_read(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    answer = {"status": "success", "resultUrl": "https://cdn.example.com/v.mp4"}

    def handler(request: httpx.Request) -> httpx.Response:
        body = compress(json.dumps(answer).encode())
        headers = {"content-encoding": encoding}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))

    result = await client_for(handler).send("https://svc/", {}, auth=None)

    assert json.loads(result.body) == answer
    assert (result.truncated, result.undecoded) == (False, None)


@pytest.mark.parametrize(
    ("encoding", "content"), [("br", b"\x1b\x00\x00"), ("gzip", b"not gzip at all")]
)
async def test_an_answer_in_an_encoding_that_cannot_be_read_says_so(
    encoding: str, content: bytes
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": encoding}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(content))

    result = await client_for(handler).send("https://svc/", {}, auth=None)

    assert result.outcome == "accepted"
    assert (result.body, result.undecoded, result.ack) == (content, encoding, None)


async def test_a_temporary_dns_failure_is_unreachable_and_so_retried() -> None:
    async def resolver_down(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    sent: list[httpx.Request] = []

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202)

    transport = httpx.MockTransport(service)
    client = Client(WebhookClient(transport, guard=UrlGuard(resolve=resolver_down)))

    result = await client.send("https://svc.example.com/run", {}, auth=None)

    assert result.outcome == "unreachable"
    assert "could not be resolved for now" in result.reason
    assert sent == []


async def test_a_resolver_that_hangs_is_bounded_by_the_request_timeout() -> None:
    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        return []

    transport = httpx.MockTransport(lambda request: httpx.Response(202))
    guard = UrlGuard(resolve=hanging)
    client = Client(WebhookClient(transport, guard=guard, timeout_seconds=0.2))

    result = await asyncio.wait_for(client.send("https://svc.example.com/", {}, auth=None), 5)

    assert result.outcome == "unreachable"
    assert result.timed_out
    assert "not resolved within 0.2s" in result.reason


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Svc.Example.com/run", "svc.example.com:443"),
        ("http://svc.example.com./run", "svc.example.com:80"),
        ("https://svc.example.com:8443/run", "svc.example.com:8443"),
        ("https://[2001:db8::1]/run", "[2001:db8::1]:443"),
    ],
)
def test_an_origin_is_one_server_host_and_port(url: str, origin: str) -> None:
    assert origin_of(url) == origin
