"""The real HTTP client against a real local server: caps, timeouts, 429, guard, limits."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook
from webhook_tasks_contracts import utc_now
from webhook_tasks_dispatcher.client import (
    MAX_STORED_BODY_CHARS,
    DeliveryResult,
    OutboundRequest,
    WebhookClient,
    create_transport,
)
from webhook_tasks_dispatcher.guard import Allowlist, Resolve, UrlGuard, system_resolve
from webhook_tasks_dispatcher.signing import decode_secret
from webhook_tasks_runtime.embedded import free_port

from .conftest import LocalServer

pytestmark = pytest.mark.integration


def client(
    *,
    allow: list[str] | None = None,
    resolve: Resolve = system_resolve,
    max_response_bytes: int = 4096,
    timeout: float = 5.0,
    per_host: int = 32,
    ssl_context: ssl.SSLContext | None = None,
    max_requests_per_host: int | None = None,
) -> tuple[WebhookClient, httpx.AsyncBaseTransport]:
    guard = UrlGuard(
        allow=Allowlist.parse(["127.0.0.1/32"] if allow is None else allow),
        require_https=False,
        resolve=resolve,
        cache_seconds=0,
    )
    http = create_transport(
        guard=guard,
        max_connections=64,
        max_connections_per_host=per_host,
        ssl_context=ssl_context,
    )
    return (
        WebhookClient(
            http,
            guard=guard,
            max_response_bytes=max_response_bytes,
            timeout_seconds=timeout,
            max_requests_per_host=max_requests_per_host,
        ),
        http,
    )


async def post(webhooks: WebhookClient, url: str, **options: object) -> DeliveryResult:
    # `options` are OutboundRequest's own fields, each of its own type.
    request = OutboundRequest(url, b'{"correlationId":"c-1"}', "msg_c-1", **options)  # type: ignore[arg-type]
    return await webhooks.send(request, now=utc_now())


async def test_an_oversized_answer_is_cut_at_the_cap(server: LocalServer) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 5_000_000)

    server.routes["/huge"] = huge
    webhooks, http = client(max_response_bytes=4096)
    try:
        result = await post(webhooks, f"{server.url}/huge")
    finally:
        await http.aclose()

    assert result.outcome == "accepted"
    assert result.truncated
    assert len(result.body) == 4096
    assert result.response_body == "x" * MAX_STORED_BODY_CHARS


async def test_a_streamed_oversized_error_body_is_cut_too(server: LocalServer) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=502)
        await response.prepare(request)
        for _ in range(200):
            await response.write(b"e" * 16_384)
        return response

    server.routes["/drip"] = drip
    webhooks, http = client(max_response_bytes=8192)
    try:
        result = await post(webhooks, f"{server.url}/drip")
    finally:
        await http.aclose()

    assert (result.outcome, result.status_code, result.truncated) == ("rejected", 502, True)


async def test_a_compressed_answer_is_inflated_only_up_to_the_cap(server: LocalServer) -> None:
    bomb = gzip.compress(b"0" * 20_000_000)
    asked: list[str] = []

    async def compressed(request: web.Request) -> web.StreamResponse:
        # As a server that compresses whatever it is asked: the bomb needs no consent.
        asked.append(request.headers.get("accept-encoding", ""))
        return web.Response(body=bomb, headers={"content-encoding": "gzip"})

    server.routes["/bomb"] = compressed
    webhooks, http = client(max_response_bytes=64 * 1024)
    try:
        result = await post(webhooks, f"{server.url}/bomb")
    finally:
        await http.aclose()

    assert asked == ["identity"]
    assert result.outcome == "accepted"
    assert result.body == b"0" * 64 * 1024
    assert result.truncated


async def test_a_server_that_never_answers_times_out(server: LocalServer) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    server.routes["/stall"] = stall
    webhooks, http = client(timeout=0.5)
    try:
        result = await post(webhooks, f"{server.url}/stall")
    finally:
        release.set()
        await http.aclose()

    assert result.outcome == "unreachable"
    assert result.timed_out
    assert "no answer within 0.5s" in (result.error or "")


async def test_429_and_5xx_carry_status_and_retry_after(server: LocalServer) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "3"}, text="slow down")

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    server.routes |= {"/busy": busy, "/broken": broken}
    webhooks, http = client()
    try:
        busy_result = await post(webhooks, f"{server.url}/busy")
        broken_result = await post(webhooks, f"{server.url}/broken")
    finally:
        await http.aclose()

    assert (busy_result.outcome, busy_result.status_code) == ("rejected", 429)
    assert busy_result.retry_after == "3"
    assert busy_result.response_body == "slow down"
    assert (broken_result.outcome, broken_result.status_code) == ("rejected", 500)


async def test_a_closed_port_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    webhooks, http = client()
    try:
        result = await post(webhooks, f"http://127.0.0.1:{port}/x")
    finally:
        await http.aclose()

    assert result.outcome == "unreachable"
    assert not result.timed_out
    assert (result.error or "").startswith("connection refused"), "not a timeout: say so"
    assert "Timeout" not in (result.error or "")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HELLO THERE\r\n\r\n", "Bad status line"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n", "Got more than"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}", "Duplicate"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            "chunk size",
        ),
    ],
)
async def test_an_answer_that_is_not_http_is_no_answer(answer: bytes, reason: str) -> None:
    async def answer_badly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_badly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    webhooks, http = client()
    try:
        result = await post(webhooks, f"http://127.0.0.1:{port}/x")
    finally:
        await http.aclose()
        server.close()

    # Retried, and counted by the host's breaker, as a host that did not answer.
    assert result.outcome == "unreachable"
    assert (result.error or "").startswith("the answer was not valid HTTP (")
    assert reason in (result.error or "")
    assert "aaaa" not in (result.error or ""), "what the host sent is not quoted"


async def test_loopback_is_refused_unless_allow_listed(server: LocalServer) -> None:
    server.routes["/ok"] = lambda request: _accepted()
    webhooks, http = client(allow=[])
    try:
        result = await post(webhooks, f"{server.url}/ok")
        by_name = await post(webhooks, server.url.replace("127.0.0.1", "localhost") + "/ok")
    finally:
        await http.aclose()

    assert result.outcome == "refused"
    assert "loopback" in result.reason
    assert by_name.outcome == "refused"
    assert server.received == []


async def test_the_connection_goes_only_to_a_checked_address(server: LocalServer) -> None:
    # DNS rebinding: the name is public when checked and loopback a moment later.
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    server.routes["/ok"] = lambda request: _accepted()
    port = server.url.rsplit(":", 1)[1]
    webhooks, http = client(allow=[], resolve=rebinding)
    try:
        result = await post(webhooks, f"http://rebind.test:{port}/ok")
    finally:
        await http.aclose()

    assert result.outcome == "refused"
    assert "loopback address (127.0.0.1)" in (result.error or "")
    assert server.received == []


async def test_an_allow_listed_name_connects_to_what_it_resolved_to(server: LocalServer) -> None:
    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    server.routes["/ok"] = lambda request: _accepted()
    port = server.url.rsplit(":", 1)[1]
    webhooks, http = client(allow=["svc.internal"], resolve=to_loopback)
    try:
        result = await post(webhooks, f"http://svc.internal:{port}/ok")
    finally:
        await http.aclose()

    assert result.outcome == "accepted"
    ((_, headers, _),) = server.received
    assert headers["Host"] == f"svc.internal:{port}", "the Host header keeps the name"


async def test_requests_to_one_host_are_limited(server: LocalServer) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.Response(status=202)

    server.routes["/slow"] = slow
    webhooks, http = client(per_host=2)
    try:
        results = await asyncio.gather(*(post(webhooks, f"{server.url}/slow") for _ in range(8)))
    finally:
        await http.aclose()

    assert [result.outcome for result in results] == ["accepted"] * 8
    assert server.most_in_flight == 2


async def test_signed_requests_verify_at_the_receiver(server: LocalServer) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    server.routes["/ok"] = lambda request: _accepted()
    webhooks, http = client()
    try:
        await post(
            webhooks,
            f"{server.url}/ok",
            signing_key=decode_secret(secret),
            auth=SecretStr("Bearer abc"),
        )
    finally:
        await http.aclose()

    ((_, headers, body),) = server.received
    assert Webhook(secret).verify(body, headers) == {"correlationId": "c-1"}
    assert headers["webhook-id"] == "msg_c-1"
    assert headers["Authorization"] == "Bearer abc"


async def _accepted() -> web.StreamResponse:
    return web.json_response({"status": "accepted", "estimatedCompletion": "5s"})


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=svc.internal"),
            *("-addext", "subjectAltName=DNS:svc.internal"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_to_a_checked_address_keeps_the_name_for_sni_and_the_certificate(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    seen: list[str | None] = []

    async def ok(request: web.Request) -> web.StreamResponse:
        seen.append(request.host)
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/ok", ok)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    # A started site has a server; aiohttp types it as optional.
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    trust = ssl.create_default_context(cafile=str(cert))
    webhooks, http = client(
        allow=["svc.internal", "127.0.0.1/32"], resolve=to_loopback, ssl_context=trust
    )
    try:
        result = await post(webhooks, f"https://svc.internal:{port}/ok")
        by_address = await post(webhooks, f"https://127.0.0.1:{port}/ok")
    finally:
        await http.aclose()
        await runner.cleanup()

    assert result.outcome == "accepted", result.error
    assert seen == [f"svc.internal:{port}"]
    # The certificate names svc.internal, not the address: verification is still on.
    assert by_address.outcome == "unreachable"
    assert "certificate" in (by_address.error or "").lower(), by_address.error


async def test_waiting_behind_a_hosts_other_requests_is_not_the_hosts_time(
    server: LocalServer,
) -> None:
    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return web.Response(status=202)

    server.routes["/slowish"] = slowish
    webhooks, http = client(per_host=1, timeout=1.0, max_requests_per_host=1)
    try:
        results = await asyncio.gather(*(post(webhooks, f"{server.url}/slowish") for _ in range(3)))
    finally:
        await http.aclose()

    # Each answer takes 0.6 s of its own 1 s: the second waits 0.6 s for the slot and is
    # answered; the third would wait 1.2 s, longer than it may, and is not sent at all.
    assert [result.outcome for result in results] == ["accepted", "accepted", "busy"]
    assert server.most_in_flight == 1
    assert len(server.received) == 2
