"""Settings of the callback gateway, read from environment variables and validated at start-up."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from webhook_tasks_runtime.settings import CallbackTokenSettings, RuntimeSettings

from .signatures import SignatureVerifier, parse_signing_secrets

MIB = 1024 * 1024
EVENT_ENVELOPE_BYTES = 64 * 1024
"""Room an event needs beyond its callback's body (ids, status, time), with a wide margin."""
KAFKA_RECORD_OVERHEAD_BYTES = 16 * 1024
"""Room a Kafka record needs beyond its value (key, headers, batch header), with a margin."""
_ORIGIN = re.compile(r"^https?://[^/\s,]+$")


class GatewaySettings(RuntimeSettings, CallbackTokenSettings):
    """Where the gateway listens, what it accepts, and how long it waits for Kafka."""

    # Inputs stay out of validation errors: CALLBACK_TOKEN_KEYS holds secrets.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    """0 lets the operating system choose a free port."""
    gateway_max_body_bytes: int = Field(default=MIB, ge=1, le=64 * MIB)
    gateway_max_bytes_in_flight: int = Field(default=32 * MIB, ge=1, le=4096 * MIB)
    """Bytes of callback bodies held at once, from their arrival to Kafka's acknowledgement;
    past them, or past one correlation id's share (an eighth, at least GATEWAY_MAX_BODY_BYTES),
    a callback gets 503. Each takes 4-9 times its body in memory: 32 MiB suits the manifests'
    512 MiB limit. At least GATEWAY_MAX_BODY_BYTES."""
    gateway_max_event_bytes: int | None = Field(default=None, ge=1024, le=64 * MIB)
    """Largest event published; unset, a body at its limit plus EVENT_ENVELOPE_BYTES. The
    callback-received topic's max.message.bytes must take it plus KAFKA_RECORD_OVERHEAD_BYTES."""
    gateway_max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=MIB)
    """Largest request line and headers together; a longer head is refused with 431."""
    gateway_request_read_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """How long a request may take to arrive whole, from its first byte; then 408 and close."""
    gateway_cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Comma-separated origins allowed to POST from a browser; "*" allows any; none by default."""
    gateway_trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    """Comma-separated addresses and networks of proxies whose X-Forwarded-For names the client;
    none by default, so the peer's own address is the client."""
    gateway_publish_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Longest wait for Kafka to take a callback before a 503; checked every 0.1 s."""
    gateway_retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    """Retry-After sent with a 503 when Kafka did not take a callback."""
    gateway_kafka_retry_max_seconds: float = Field(default=10.0, gt=0, le=600)
    """Longest pause between attempts to connect to an unreachable Kafka."""
    gateway_shutdown_timeout_seconds: int = Field(default=10, ge=1, le=600)
    """How long in-flight callbacks may run after SIGTERM."""
    gateway_metrics_host: str = "0.0.0.0"
    gateway_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Where Prometheus /metrics (and /healthz, /readyz) are served, apart from callbacks so
    they are never public; unset serves none."""
    gateway_rate_limit_per_client: float = Field(default=0, ge=0)
    """Callbacks per second from one client address (each replica); 0 turns the limit off."""
    gateway_rate_limit_per_client_burst: int = Field(default=200, ge=1)
    gateway_rate_limit_per_correlation_id: float = Field(default=0, ge=0)
    """Callbacks per second for one correlation id, counted once its token verifies; 0 is off."""
    gateway_rate_limit_per_correlation_id_burst: int = Field(default=50, ge=1)
    gateway_rate_limit_max_tracked: int = Field(default=100_000, ge=1, le=10_000_000)
    """Most clients (and as many correlation ids) remembered; idle ones are forgotten first."""
    gateway_signing_secrets: SecretStr = SecretStr("")
    """"endpoint:whsec_...,…": URLs bound to a listed endpoint must be signed; repeat to rotate."""
    gateway_signature_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)
    """How far webhook-timestamp may be from the gateway's clock, either way."""

    @property
    def max_event_bytes(self) -> int:
        """Return the largest event to publish: as set, else room for a body at its limit."""
        if self.gateway_max_event_bytes is not None:
            return self.gateway_max_event_bytes
        return self.gateway_max_body_bytes + EVENT_ENVELOPE_BYTES

    @property
    def kafka_max_request_bytes(self) -> int:
        """Return the producer's max_request_size: room for the largest event as a record."""
        return self.max_event_bytes + KAFKA_RECORD_OVERHEAD_BYTES

    @model_validator(mode="after")
    def _a_largest_callback_fits_in_flight(self) -> GatewaySettings:
        if self.gateway_max_bytes_in_flight < self.gateway_max_body_bytes:
            raise ValueError(
                "GATEWAY_MAX_BYTES_IN_FLIGHT must be at least GATEWAY_MAX_BODY_BYTES, "
                "or a callback at the body limit could never be taken"
            )
        return self

    @field_validator("gateway_signing_secrets")
    @classmethod
    def _secrets_parse(cls, value: SecretStr) -> SecretStr:
        # Fail at start-up, not on the first callback; errors never quote a secret.
        parse_signing_secrets(value.get_secret_value())
        return value

    def signature_verifier(self) -> SignatureVerifier:
        """Return the verifier of callback signatures for the configured secrets."""
        return SignatureVerifier(
            parse_signing_secrets(self.gateway_signing_secrets.get_secret_value()),
            tolerance_seconds=self.gateway_signature_tolerance_seconds,
        )

    @field_validator("gateway_cors_allow_origins", "gateway_trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("gateway_cors_allow_origins")
    @classmethod
    def _origins_are_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            # Browsers send "scheme://host[:port]" with no path; anything else never matches.
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://example.com or '*'")
        return origins

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, proxies: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in proxies:
            # uvicorn would then take the leftmost X-Forwarded-For address, which the client
            # wrote: a client could pick a new rate-limit key for every request.
            raise ValueError(
                "'*' would let any client choose its own address; "
                "list the networks of the proxies in front of the gateway, like 10.0.0.0/8"
            )
        networks = []
        for proxy in proxies:
            try:
                networks.append(str(ipaddress.ip_network(proxy, strict=False)))
            except ValueError:
                # uvicorn would keep such an entry as a literal that no peer ever matches.
                raise ValueError(
                    f"{proxy!r} is not an IP address or network like 10.0.0.0/8"
                ) from None
        return tuple(networks)
