"""The callback URL is a capability: it carries a token only we can mint.

token = "<key id>.<base64url(HMAC-SHA256(key, "webhook-tasks/callback/v1:" + correlation id))>"

A token may also be bound to an endpoint: the name under which the gateway keeps
that external service's signing secrets. The name is in the token and under the MAC,
so it can be neither removed nor swapped:

token = "<key id>.<endpoint>.<base64url(HMAC-SHA256(key,
         "webhook-tasks/callback/v1/endpoint:" + endpoint + ":" + correlation id))>"

The token of a task sent with a credential (webhookAuth) also carries the
credential's fingerprints (see `credential_echoes`), under the MAC as well, so the
gateway can mask the credential where the callback echoes it; the endpoint may be empty:

token = "<key id>.<endpoint>.<base64url(digests)>.<base64url(HMAC-SHA256(key,
         "webhook-tasks/callback/v1/echoes:" + endpoint + ":" + base64url(digests)
         + ":" + correlation id))>"

The gateway verifies it with the key named by the key id, in constant time and
without any database read. Several keys may be configured at once so keys can be
rotated: the first one mints new tokens, all of them verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from .credential_echoes import CredentialFingerprints, Fingerprints

CALLBACK_PATH_PREFIX = "/v1/callbacks"
_MESSAGE_PREFIX = b"webhook-tasks/callback/v1:"
# Differs from _MESSAGE_PREFIX before any variable part, so the two kinds never share a message.
_ENDPOINT_MESSAGE_PREFIX = b"webhook-tasks/callback/v1/endpoint:"
_ECHOES_MESSAGE_PREFIX = b"webhook-tasks/callback/v1/echoes:"
_ECHOES = re.compile(r"[A-Za-z0-9_-]{22,64}")
"""Fingerprints in a token: one to MAX_DIGESTS digests, base64url without padding."""
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an endpoint name may be: no '.', which separates the parts of a token, nor ':'.
Match it with `fullmatch`: `$` would let a trailing newline through."""
NO_ENDPOINT = ""
"""What `CallbackTokens.verified_endpoint` returns for a valid token bound to no endpoint."""
MIN_KEY_BYTES = 32


class CallbackKeyError(ValueError):
    """The configured callback keys are unusable."""


@dataclass(frozen=True, slots=True)
class CallbackKey:
    """One HMAC key and the id that names it inside tokens."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        # Neither part is quoted: swapped by mistake, the id would be the secret.
        if not _KEY_ID.match(self.key_id):
            raise CallbackKeyError("the key id must be 1-32 letters, digits, '-' or '_'")
        if len(self.secret) < MIN_KEY_BYTES:
            raise CallbackKeyError(f"the secret is too short: use at least {MIN_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"CallbackKey(key_id={self.key_id!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a token we minted says besides the task: its endpoint and credential fingerprints."""

    endpoint: str
    """The endpoint the token is bound to; NO_ENDPOINT if none."""
    echoes: Fingerprints | None
    """The fingerprints of the credential the task was sent with, if it had one."""


def parse_callback_keys(spec: str) -> list[CallbackKey]:
    """Parse "id:secret,id:secret" (newest first); a secret may be given as "base64:...".

    Errors name an entry by its position, never by its text: with the parts swapped by
    mistake, the id would be the secret.
    """
    keys: list[CallbackKey] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        entry = f"callback key #{index + 1}"
        key_id, sep, secret = item.partition(":")
        if not sep or not secret:
            raise CallbackKeyError(f"{entry} must look like 'id:secret'")
        if secret.startswith("base64:"):
            try:
                raw = base64.b64decode(secret.removeprefix("base64:"), validate=True)
            except ValueError:
                raise CallbackKeyError(f"{entry} is not valid base64") from None
        else:
            raw = secret.encode()
        try:
            keys.append(CallbackKey(key_id.strip(), raw))
        except CallbackKeyError as error:
            raise CallbackKeyError(f"{entry}: {error}") from None
    if not keys:
        raise CallbackKeyError("at least one callback key is required")
    if len({key.key_id for key in keys}) != len(keys):
        raise CallbackKeyError("callback key ids must be unique")
    return keys


class CallbackTokens:
    """Mint and verify callback tokens under a ring of keys (newest first)."""

    def __init__(self, keys: Sequence[CallbackKey]) -> None:
        if not keys:
            raise CallbackKeyError("at least one callback key is required")
        self._current = keys[0]
        self._by_id = {key.key_id: key.secret for key in keys}
        self._fingerprints = CredentialFingerprints(keys)

    @property
    def fingerprints(self) -> CredentialFingerprints:
        """Return the fingerprints of credentials under the same keys, for `mint`'s `echoes`."""
        return self._fingerprints

    def mint(
        self,
        correlation_id: str,
        *,
        endpoint: str | None = None,
        echoes: Fingerprints | None = None,
    ) -> str:
        """Mint under the newest key the token of `correlation_id`.

        `endpoint`: bind the token to it. `echoes`: carry these fingerprints of the task's
        credential, taken under the same (newest) key.
        """
        key_id, secret = self._current.key_id, self._current.secret
        if endpoint is not None and not ENDPOINT_NAME.fullmatch(endpoint):
            raise ValueError("an endpoint name must be 1-64 letters, digits, '-' or '_'")
        if echoes is not None:
            if echoes.key_id != key_id or not echoes.well_formed:
                raise ValueError("the fingerprints must be whole and taken under the newest key")
            encoded = base64.urlsafe_b64encode(echoes.digests).rstrip(b"=").decode()
            bound = endpoint or NO_ENDPOINT
            return (
                f"{key_id}.{bound}.{encoded}.{_echoes_mac(secret, bound, encoded, correlation_id)}"
            )
        if endpoint is None:
            return f"{key_id}.{_mac(secret, correlation_id)}"
        return f"{key_id}.{endpoint}.{_endpoint_mac(secret, endpoint, correlation_id)}"

    def verify(self, correlation_id: str, token: str) -> bool:
        """Return whether `token` was minted by us for `correlation_id` with no endpoint bound."""
        # A bound token is refused here, so a caller blind to endpoints (and so to their
        # signing secrets) never accepts one; `verified_endpoint` is the check for those.
        return self.verified_endpoint(correlation_id, token) == NO_ENDPOINT

    def verified_endpoint(self, correlation_id: str, token: str) -> str | None:
        """Return the endpoint `token` is bound to (NO_ENDPOINT if none); None if it is not ours."""
        verified = self.verified(correlation_id, token)
        return None if verified is None else verified.endpoint

    def verified(self, correlation_id: str, token: str) -> VerifiedToken | None:
        """Return what `token` carries if we minted it for `correlation_id`; None if not."""
        key_id, sep, rest = token.partition(".")
        secret = self._by_id.get(key_id)
        if not sep or secret is None:
            return None
        parts = rest.split(".")
        encoded = ""
        if len(parts) == 1:
            endpoint, mac = NO_ENDPOINT, parts[0]
            expected = _mac(secret, correlation_id)
        elif len(parts) == 2 and ENDPOINT_NAME.fullmatch(parts[0]):
            endpoint, mac = parts
            expected = _endpoint_mac(secret, endpoint, correlation_id)
        elif (
            len(parts) == 3
            and (not parts[0] or ENDPOINT_NAME.fullmatch(parts[0]))
            and _ECHOES.fullmatch(parts[1])
        ):
            endpoint, encoded, mac = parts
            expected = _echoes_mac(secret, endpoint, encoded, correlation_id)
        else:
            return None
        # A MAC we minted is base64url: anything else (a lone surrogate would not even encode,
        # and compare_digest takes no other text) is not ours.
        if not mac.isascii() or not hmac.compare_digest(mac, expected):
            return None
        if not encoded:
            return VerifiedToken(endpoint, None)
        # Decoded only once the MAC shows we encoded it: not every such text is base64.
        digests = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return VerifiedToken(endpoint, Fingerprints(key_id, digests))

    def callback_url(
        self,
        base_url: str,
        correlation_id: str,
        *,
        endpoint: str | None = None,
        echoes: Fingerprints | None = None,
    ) -> str:
        """Return the callback URL, token included, for `correlation_id` (see `mint`)."""
        token = self.mint(correlation_id, endpoint=endpoint, echoes=echoes)
        return callback_url(base_url, correlation_id, token)


def callback_url(base_url: str, correlation_id: str, token: str) -> str:
    """Return `<base>/v1/callbacks/<correlation id>/<token>`."""
    return (
        f"{base_url.rstrip('/')}{CALLBACK_PATH_PREFIX}/"
        f"{quote(correlation_id, safe='')}/{quote(token, safe='')}"
    )


def _mac(secret: bytes, correlation_id: str) -> str:
    message = _MESSAGE_PREFIX + _utf8(correlation_id)
    return _encoded(hmac.new(secret, message, hashlib.sha256))


def _endpoint_mac(secret: bytes, endpoint: str, correlation_id: str) -> str:
    message = b"%s%s:%s" % (_ENDPOINT_MESSAGE_PREFIX, endpoint.encode(), _utf8(correlation_id))
    return _encoded(hmac.new(secret, message, hashlib.sha256))


def _echoes_mac(secret: bytes, endpoint: str, echoes: str, correlation_id: str) -> str:
    message = b"%s%s:%s:%s" % (
        _ECHOES_MESSAGE_PREFIX,
        endpoint.encode(),
        echoes.encode(),
        _utf8(correlation_id),
    )
    return _encoded(hmac.new(secret, message, hashlib.sha256))


def _utf8(text: str) -> bytes:
    # UTF-8 as before for every real string; a lone surrogate gets a MAC instead of an error.
    return text.encode("utf-8", "surrogatepass")


def _encoded(mac: hmac.HMAC) -> str:
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
