"""GatewaySettings: environment variables, defaults, and refusals that never quote a secret."""

from __future__ import annotations

import base64
import os

import pytest
from pydantic import ValidationError
from starlette.datastructures import Headers
from webhook_tasks_gateway import GatewaySettings


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "KAFKA_", "CALLBACK_", "TOPIC_", "LOG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9092")
    secret = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CALLBACK_TOKEN_KEYS", f"k1:base64:{secret}")
    return monkeypatch


def test_defaults(environment: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings()

    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8080)
    assert settings.gateway_max_body_bytes == 1024 * 1024
    assert settings.gateway_cors_allow_origins == ()
    assert settings.gateway_trusted_proxies == ()
    assert settings.gateway_publish_timeout_seconds == 10
    assert settings.kafka_bootstrap_servers == "kafka-0:9092"
    assert settings.callback_tokens().verify("c-1", settings.callback_tokens().mint("c-1"))


def test_an_event_may_hold_a_body_at_the_limit_and_kafka_may_take_it(
    environment: pytest.MonkeyPatch,
) -> None:
    default = GatewaySettings()
    environment.setenv("GATEWAY_MAX_BODY_BYTES", str(4 * 1024 * 1024))
    larger = GatewaySettings()
    environment.setenv("GATEWAY_MAX_EVENT_BYTES", "5000000")
    explicit = GatewaySettings()

    for settings in (default, larger):
        assert settings.max_event_bytes >= settings.gateway_max_body_bytes + 16 * 1024
    assert explicit.max_event_bytes == 5_000_000
    for settings in (default, larger, explicit):
        # The record adds a key (a correlation id: up to 200 characters) and a batch header.
        assert settings.kafka_max_request_bytes >= settings.max_event_bytes + 1024
    # Within deploy/kubernetes/topics.yaml's max.message.bytes for callback-received.
    assert default.kafka_max_request_bytes <= 1179648


def test_environment_variables_are_read(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("GATEWAY_HOST", "0.0.0.0")
    environment.setenv("GATEWAY_PORT", "9000")
    environment.setenv("GATEWAY_MAX_BODY_BYTES", "2048")
    environment.setenv("GATEWAY_CORS_ALLOW_ORIGINS", "https://a.example, http://localhost:3000")
    environment.setenv("GATEWAY_PUBLISH_TIMEOUT_SECONDS", "2.5")
    environment.setenv("GATEWAY_RETRY_AFTER_SECONDS", "30")
    environment.setenv("TOPIC_PREFIX", "staging")

    settings = GatewaySettings()

    assert (settings.gateway_host, settings.gateway_port) == ("0.0.0.0", 9000)
    assert settings.gateway_max_body_bytes == 2048
    assert settings.gateway_cors_allow_origins == ("https://a.example", "http://localhost:3000")
    assert settings.gateway_publish_timeout_seconds == 2.5
    assert settings.gateway_retry_after_seconds == 30
    assert settings.topics.callback_received == "staging.callback-received"


def test_wildcard_origin_is_allowed(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("GATEWAY_CORS_ALLOW_ORIGINS", "*")

    assert GatewaySettings().gateway_cors_allow_origins == ("*",)


@pytest.mark.parametrize("origin", ["https://a.example/", "a.example", "https://a.example/path"])
def test_what_is_not_an_origin_is_refused(environment: pytest.MonkeyPatch, origin: str) -> None:
    environment.setenv("GATEWAY_CORS_ALLOW_ORIGINS", origin)

    with pytest.raises(ValidationError, match="is not an origin"):
        GatewaySettings()


def test_trusted_proxies_are_addresses_and_networks(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("GATEWAY_TRUSTED_PROXIES", "10.0.0.5, 10.1.2.3/16,fd00::/8, ::1")

    assert GatewaySettings().gateway_trusted_proxies == (
        "10.0.0.5/32",
        "10.1.0.0/16",
        "fd00::/8",
        "::1/128",
    )


@pytest.mark.parametrize("proxies", ["*", "*,10.0.0.1", "10.0.0.1, *"])
def test_trusting_every_peer_is_refused(environment: pytest.MonkeyPatch, proxies: str) -> None:
    # Trusted, any peer's leftmost X-Forwarded-For address (the client's own words) would be
    # the client: a new rate-limit key for every request.
    environment.setenv("GATEWAY_TRUSTED_PROXIES", proxies)

    with pytest.raises(ValidationError, match="list the networks of the proxies"):
        GatewaySettings()


@pytest.mark.parametrize("proxy", ["ingress.local", "10.0.0.256", "10.0.0.0/33"])
def test_what_is_not_an_address_or_network_is_refused(
    environment: pytest.MonkeyPatch, proxy: str
) -> None:
    environment.setenv("GATEWAY_TRUSTED_PROXIES", proxy)

    with pytest.raises(ValidationError, match="is not an IP address or network"):
        GatewaySettings()


def test_a_bad_key_is_refused_without_quoting_it(environment: pytest.MonkeyPatch) -> None:
    secret = "short-but-secret-value"
    environment.setenv("CALLBACK_TOKEN_KEYS", f"k1:{secret}")

    with pytest.raises(ValidationError) as refused:
        GatewaySettings()

    assert "too short" in str(refused.value)
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value", "entry", "secret"),
    [
        # The parts swapped by mistake: what stands where the name belongs is the secret.
        (
            "CALLBACK_TOKEN_KEYS",
            "current:base64:"
            + base64.b64encode(b"k" * 32).decode()
            + ",ThisIsMySuperSecretKeyValue12345:current",
            "callback key #2",
            "ThisIsMySuperSecretKeyValue12345",
        ),
        (
            "GATEWAY_SIGNING_SECRETS",
            "whsec_c2VjcmV0c2VjcmV0c2VjcmV0:svc",
            "signing secret #1",
            "c2VjcmV0c2VjcmV0c2VjcmV0",
        ),
    ],
)
def test_an_entry_with_its_parts_swapped_is_refused_by_position_not_by_its_text(
    environment: pytest.MonkeyPatch, name: str, value: str, entry: str, secret: str
) -> None:
    environment.setenv(name, value)

    with pytest.raises(ValidationError) as refused:
        GatewaySettings()

    message = str(refused.value)
    assert entry in message
    assert "too short" in message
    assert secret not in message


def test_key_ring_is_not_shown_in_the_settings_repr(environment: pytest.MonkeyPatch) -> None:
    secret = os.environ["CALLBACK_TOKEN_KEYS"].partition("base64:")[2]

    assert secret not in repr(GatewaySettings())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_MAX_BODY_BYTES", "0"),
        ("GATEWAY_PUBLISH_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_PORT", "70000"),
    ],
)
def test_out_of_range_values_are_refused(
    environment: pytest.MonkeyPatch, name: str, value: str
) -> None:
    environment.setenv(name, value)

    with pytest.raises(ValidationError):
        GatewaySettings()


def test_signing_secrets_and_tolerance_are_read(environment: pytest.MonkeyPatch) -> None:
    secret = base64.b64encode(os.urandom(24)).decode()
    environment.setenv("GATEWAY_SIGNING_SECRETS", f"video:whsec_{secret}")
    environment.setenv("GATEWAY_SIGNATURE_TOLERANCE_SECONDS", "30")

    settings = GatewaySettings()

    assert settings.gateway_signature_tolerance_seconds == 30
    assert secret not in repr(settings)
    assert settings.signature_verifier().expect("other", Headers({})) is None


def test_no_signing_secrets_and_five_minutes_by_default(environment: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings()

    assert settings.gateway_signing_secrets.get_secret_value() == ""
    assert settings.gateway_signature_tolerance_seconds == 300


def test_a_bad_signing_secret_is_refused_without_quoting_it(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("GATEWAY_SIGNING_SECRETS", "video:whsec_c2hvcnRzZWNyZXQ")

    with pytest.raises(ValidationError) as refused:
        GatewaySettings()

    assert "too short" in str(refused.value)
    assert "c2hvcnRzZWNyZXQ" not in str(refused.value)


def test_rate_limits_are_off_by_default_and_read_from_the_environment(
    environment: pytest.MonkeyPatch,
) -> None:
    default = GatewaySettings()
    environment.setenv("GATEWAY_RATE_LIMIT_PER_CLIENT", "50")
    environment.setenv("GATEWAY_RATE_LIMIT_PER_CLIENT_BURST", "100")
    environment.setenv("GATEWAY_RATE_LIMIT_PER_CORRELATION_ID", "2.5")
    environment.setenv("GATEWAY_RATE_LIMIT_PER_CORRELATION_ID_BURST", "10")

    configured = GatewaySettings()

    assert (
        default.gateway_rate_limit_per_client,
        default.gateway_rate_limit_per_correlation_id,
    ) == (
        0,
        0,
    )
    assert configured.gateway_rate_limit_per_client == 50
    assert configured.gateway_rate_limit_per_client_burst == 100
    assert configured.gateway_rate_limit_per_correlation_id == 2.5
    assert configured.gateway_rate_limit_per_correlation_id_burst == 10
