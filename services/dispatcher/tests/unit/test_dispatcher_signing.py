"""Outbound signatures, checked with the official Standard Webhooks library."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from webhook_tasks_contracts import utc_now
from webhook_tasks_dispatcher.client import OutboundRequest, WebhookClient
from webhook_tasks_dispatcher.guard import UrlGuard
from webhook_tasks_dispatcher.signing import (
    SigningKeyError,
    SigningKeys,
    decode_secret,
    signature_headers,
    webhook_id_of,
)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_the_official_library_verifies_our_signature() -> None:
    secret = new_secret()
    body = b'{"correlationId":"c-1","prompt":"make a video"}'

    headers = signature_headers(
        decode_secret(secret), webhook_id="msg_c-1", timestamp=utc_now(), body=body
    )

    assert Webhook(secret).verify(body, headers) == {
        "correlationId": "c-1",
        "prompt": "make a video",
    }
    assert headers["webhook-signature"].startswith("v1,")


def test_a_changed_body_another_secret_or_an_old_timestamp_fail_verification() -> None:
    secret = new_secret()
    key = decode_secret(secret)
    body = b'{"a":1}'
    headers = signature_headers(key, webhook_id="msg_x", timestamp=utc_now(), body=body)

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    old = signature_headers(
        key, webhook_id="msg_x", timestamp=utc_now() - timedelta(hours=1), body=body
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, old)


def test_the_timestamp_is_whole_seconds() -> None:
    when = datetime(2026, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC)
    headers = signature_headers(b"k" * 32, webhook_id="m", timestamp=when, body=b"")
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))


def test_the_webhook_id_depends_only_on_the_task() -> None:
    assert webhook_id_of("c-1") == webhook_id_of("c-1") != webhook_id_of("c-2")


def test_keys_are_chosen_by_longest_prefix_then_host_then_default() -> None:
    a, b, c, d = (SecretStr(new_secret()) for _ in range(4))
    keys = SigningKeys(
        {
            "https://svc.example.com/": a,
            "https://svc.example.com/v2/": b,
            "other.example.com": c,
            "*": d,
        }
    )

    assert keys.key_for("https://svc.example.com/v1/run") == decode_secret(a.get_secret_value())
    assert keys.key_for("https://svc.example.com/v2/run") == decode_secret(b.get_secret_value())
    assert keys.key_for("https://other.example.com/x") == decode_secret(c.get_secret_value())
    assert keys.key_for("https://third.example.com/x") == decode_secret(d.get_secret_value())
    assert SigningKeys({}).key_for("https://svc.example.com/") is None


def test_a_bad_secret_is_refused_without_quoting_it() -> None:
    with pytest.raises(SigningKeyError) as error:
        SigningKeys({"*": SecretStr("whsec_not-base64!!")})
    assert "not-base64" not in str(error.value)
    with pytest.raises(SigningKeyError, match="16 bytes"):
        decode_secret("whsec_" + base64.b64encode(b"short").decode())
    assert "whsec" not in repr(SigningKeys({"*": SecretStr(new_secret())}))


@pytest.mark.parametrize(
    ("prefix", "url"),
    [
        ("https://api.partner.com", "https://api.partner.com.evil.net/x"),
        ("https://api.partner.com", "https://api.partner.com@evil.net/x"),
        ("https://api.partner.com", "https://api.partner.com:secret@evil.net/x"),
        ("https://api.partner.com", "https://api.partner.comevil.net/x"),
        ("https://api.partner.com", "https://api.partner.com:8443/x"),
        ("https://api.partner.com", "http://api.partner.com/x"),
        ("https://api.partner.com:8443", "https://api.partner.com:84430/x"),
        ("https://api.partner.com/v1", "https://api.partner.com/v10"),
        ("https://api.partner.com/v1", "https://api.partner.com/"),
        ("https://api.partner.com/v1", "https://api.partner.com/x/v1/y"),
    ],
)
def test_a_prefix_does_not_sign_for_another_host_port_scheme_or_path(prefix: str, url: str) -> None:
    keys = SigningKeys({prefix: SecretStr(new_secret())})

    assert keys.key_for(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://api.partner.com/v1",
        "https://api.partner.com/v1/",
        "https://api.partner.com/v1/run?x=1",
        "https://API.Partner.COM/v1/run",
        "https://api.partner.com./v1/run",
        "https://api.partner.com:443/v1/run",
        "https://user@api.partner.com/v1/run",
    ],
)
def test_a_prefix_signs_its_own_origin_at_a_path_segment_boundary(url: str) -> None:
    secret = SecretStr(new_secret())
    keys = SigningKeys({"https://api.partner.com/v1": secret})

    assert keys.key_for(url) == decode_secret(secret.get_secret_value())


def test_a_prefix_is_compared_parsed_and_the_longest_path_wins() -> None:
    whole, v1 = SecretStr(new_secret()), SecretStr(new_secret())
    keys = SigningKeys(
        {"HTTPS://Api.Partner.Com.:443": whole, "https://api.partner.com/v1/": v1},
    )

    assert keys.key_for("https://api.partner.com/v1/run") == decode_secret(v1.get_secret_value())
    assert keys.key_for("https://api.partner.com/v10") == decode_secret(whole.get_secret_value())
    assert keys.key_for("https://api.partner.com") == decode_secret(whole.get_secret_value())
    assert keys.key_for("http://api.partner.com:80/") is None
    assert keys.key_for("http://localhost:99999/") is None


def test_a_prefix_with_an_invalid_port_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="invalid port") as error:
        SigningKeys({"https://user:hunter2@api.partner.com:99999/": SecretStr(new_secret())})
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    "path",
    [
        "/tenant-a/hook",
        "/tenant-b/../tenant-a/hook",
        "/tenant-b/%2e%2e/tenant-a/hook",
        "/tenant-b/%2E./tenant-a/hook",
        "/tenant-b/./../tenant-a/hook",
        "/tenant-b/x/%2E%2E/%2e%2e/tenant-a/hook?next=/tenant-b",
        "/%74enant-a/hook",
    ],
)
async def test_a_request_is_signed_with_the_key_of_the_path_it_is_sent_to(path: str) -> None:
    tenant_a, tenant_b = new_secret(), new_secret()
    keys = SigningKeys(
        {
            "https://api.partner.com/tenant-a": SecretStr(tenant_a),
            "https://api.partner.com/tenant-b": SecretStr(tenant_b),
        }
    )
    sent: list[httpx.Request] = []

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202)

    async def resolve_publicly(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    client = WebhookClient(httpx.MockTransport(service), guard=UrlGuard(resolve=resolve_publicly))
    url = "https://api.partner.com" + path
    body = b'{"correlationId": "c"}'
    await client.send(
        OutboundRequest(url, body, "msg_c", signing_key=keys.key_for(url)), now=utc_now()
    )

    (request,) = sent
    assert request.url.path == "/tenant-a/hook"
    headers = {name: request.headers[name] for name in request.headers}
    Webhook(tenant_a).verify(request.content, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(tenant_b).verify(request.content, headers)


@pytest.mark.parametrize(
    "path",
    ["/tenant-b/..%2Ftenant-a/hook", "/tenant-b/%2e%2e%2ftenant-a/hook", "/tenant-b/..%5Cx"],
)
async def test_a_path_servers_resolve_differently_is_never_sent(path: str) -> None:
    sent: list[httpx.Request] = []

    async def resolve_publicly(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202)

    client = WebhookClient(httpx.MockTransport(service), guard=UrlGuard(resolve=resolve_publicly))
    url = "https://api.partner.com" + path
    result = await client.send(OutboundRequest(url, b"{}", "msg_c"), now=utc_now())

    assert (result.outcome, result.unsendable) == ("refused", True)
    assert "resolve differently" in result.reason
    assert sent == []


async def test_an_encoded_slash_alone_is_sent_as_it_is() -> None:
    sent: list[httpx.Request] = []

    async def resolve_publicly(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202)

    client = WebhookClient(httpx.MockTransport(service), guard=UrlGuard(resolve=resolve_publicly))
    url = "https://api.partner.com/files/a%2Fb.mp4"
    await client.send(OutboundRequest(url, b"{}", "msg_c"), now=utc_now())

    assert sent[0].url.raw_path == b"/files/a%2Fb.mp4"
