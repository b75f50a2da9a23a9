"""Standard Webhooks verification of callbacks, with signing secrets per endpoint.

    signed content     = webhook-id + "." + webhook-timestamp + "." + raw body
    webhook-signature  = space-separated "v1,<base64(HMAC-SHA256(secret, signed content))>"

An endpoint is named inside the callback token (see webhook_tasks_contracts.callback_token),
so the gateway knows whose secrets apply without a database. Where an endpoint has
secrets, a valid signature under any of them is required; the headers and the
timestamp are checked before the body is read, the MAC once it has been.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from webhook_tasks_contracts import ENDPOINT_NAME

from .problems import InvalidSignatureError

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
MIN_SECRET_BYTES = 16
MAX_SIGNATURES = 10
"""More signatures than this in one header are refused rather than each tried."""
_MAX_TIMESTAMP_DIGITS = 12
_DIGEST_BYTES = hashlib.sha256().digest_size


class SigningSecretError(ValueError):
    """The configured signing secrets are unusable."""


def parse_signing_secrets(spec: str) -> dict[str, tuple[bytes, ...]]:
    """Parse "endpoint:whsec_...,endpoint:whsec_..."; an endpoint repeated has several secrets.

    Errors name an entry by its position, never by its text: with the parts swapped by
    mistake, the endpoint would be the secret.
    """
    secrets: dict[str, list[bytes]] = {}
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        entry = f"signing secret #{index + 1}"
        endpoint, sep, secret = item.partition(":")
        endpoint = endpoint.strip()
        if not sep or not secret.strip():
            raise SigningSecretError(f"{entry} must look like 'endpoint:whsec_...'")
        if not ENDPOINT_NAME.fullmatch(endpoint):
            raise SigningSecretError(
                f"{entry}: an endpoint name is 1-64 letters, digits, '-' or '_'"
            )
        secrets.setdefault(endpoint, []).append(_decoded(entry, secret.strip()))
    return {endpoint: tuple(values) for endpoint, values in secrets.items()}


def _decoded(entry: str, secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Unpadded base64 is common in the wild; the official libraries accept it too.
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SigningSecretError(f"{entry} is not whsec_<base64>") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise SigningSecretError(f"{entry} is too short: use at least {MIN_SECRET_BYTES} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    """The signature headers of one callback, checked for form and age, awaiting its body."""

    prefix: bytes
    signatures: tuple[bytes, ...]
    secrets: tuple[bytes, ...]

    def verify(self, body: bytes) -> None:
        """Refuse `body` unless one signature is the MAC of it under one of the secrets."""
        for secret in self.secrets:
            mac = hmac.new(secret, self.prefix, hashlib.sha256)
            mac.update(body)
            expected = mac.digest()
            # Every signature is compared, so the time taken says nothing about which matched.
            matched = False
            for signature in self.signatures:
                matched |= hmac.compare_digest(signature, expected)
            if matched:
                return
        raise InvalidSignatureError("No webhook-signature matches the body.")


class SignatureVerifier:
    """Decide, per endpoint, whether a callback must be signed, and check what it carries."""

    def __init__(
        self,
        secrets: Mapping[str, tuple[bytes, ...]],
        *,
        tolerance_seconds: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = dict(secrets)
        self._tolerance = tolerance_seconds
        self._clock = clock

    def expect(self, endpoint: str, headers: Headers) -> SignedDelivery | None:
        """Return the delivery to verify once the body is read; None if `endpoint` signs nothing."""
        secrets = self._secrets.get(endpoint) if endpoint else None
        if not secrets:
            return None
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not (msg_id and timestamp and signature):
            raise InvalidSignatureError(
                "This callback URL requires webhook-id, webhook-timestamp and webhook-signature."
            )
        if not (
            timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS
        ):
            raise InvalidSignatureError("webhook-timestamp must be Unix time in whole seconds.")
        if abs(self._clock() - int(timestamp)) > self._tolerance:
            raise InvalidSignatureError(
                f"webhook-timestamp is more than {self._tolerance} seconds away from now."
            )
        # Header values arrive as latin-1 text; encoding back yields the bytes that were signed.
        prefix = b"%s.%s." % (msg_id.encode("latin-1"), timestamp.encode("latin-1"))
        return SignedDelivery(prefix, _v1_signatures(signature), secrets)


def _v1_signatures(header: str) -> tuple[bytes, ...]:
    entries = header.split()
    if len(entries) > MAX_SIGNATURES:
        raise InvalidSignatureError(
            f"webhook-signature carries more than {MAX_SIGNATURES} entries."
        )
    found: list[bytes] = []
    for entry in entries:
        version, sep, encoded = entry.partition(",")
        # Other versions (v1a: asymmetric) are skipped, as the specification says.
        if not sep or version != "v1":
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == _DIGEST_BYTES:
            found.append(raw)
    if not found:
        raise InvalidSignatureError("webhook-signature carries no v1 signature.")
    return tuple(found)
