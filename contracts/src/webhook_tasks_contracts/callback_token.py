"""The callback URL is a capability: it carries a token only we can mint.

token = "<key id>.<base64url(HMAC-SHA256(key, "webhook-tasks/callback/v1:" + correlation id))>"

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

CALLBACK_PATH_PREFIX = "/v1/callbacks"
_MESSAGE_PREFIX = b"webhook-tasks/callback/v1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_KEY_BYTES = 32


class CallbackKeyError(ValueError):
    """The configured callback keys are unusable."""


@dataclass(frozen=True, slots=True)
class CallbackKey:
    """One HMAC key and the id that names it inside tokens."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise CallbackKeyError("a callback key id must be 1-32 letters, digits, '-' or '_'")
        if len(self.secret) < MIN_KEY_BYTES:
            raise CallbackKeyError(
                f"callback key {self.key_id!r} is too short: use at least {MIN_KEY_BYTES} bytes"
            )

    def __repr__(self) -> str:
        return f"CallbackKey(key_id={self.key_id!r}, secret=<hidden>)"


def parse_callback_keys(spec: str) -> list[CallbackKey]:
    """Parse "id:secret,id:secret" (newest first); a secret may be given as "base64:...".

    Errors never quote a secret.
    """
    keys: list[CallbackKey] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        key_id, sep, secret = item.partition(":")
        if not sep or not secret:
            raise CallbackKeyError(f"callback key #{index + 1} must look like 'id:secret'")
        if secret.startswith("base64:"):
            try:
                raw = base64.b64decode(secret.removeprefix("base64:"), validate=True)
            except ValueError as error:
                raise CallbackKeyError(f"callback key {key_id!r} is not valid base64") from error
        else:
            raw = secret.encode()
        keys.append(CallbackKey(key_id.strip(), raw))
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

    def mint(self, correlation_id: str) -> str:
        """Return the token for `correlation_id` under the newest key."""
        return f"{self._current.key_id}.{_mac(self._current.secret, correlation_id)}"

    def verify(self, correlation_id: str, token: str) -> bool:
        """Return whether `token` was minted by us for `correlation_id`."""
        key_id, sep, mac = token.partition(".")
        secret = self._by_id.get(key_id)
        if not sep or secret is None:
            return False
        return hmac.compare_digest(mac.encode(), _mac(secret, correlation_id).encode())

    def callback_url(self, base_url: str, correlation_id: str) -> str:
        """Return the callback URL, token included, for `correlation_id`."""
        return callback_url(base_url, correlation_id, self.mint(correlation_id))


def callback_url(base_url: str, correlation_id: str, token: str) -> str:
    """Return `<base>/v1/callbacks/<correlation id>/<token>`."""
    return (
        f"{base_url.rstrip('/')}{CALLBACK_PATH_PREFIX}/"
        f"{quote(correlation_id, safe='')}/{quote(token, safe='')}"
    )


def _mac(secret: bytes, correlation_id: str) -> str:
    digest = hmac.new(secret, _MESSAGE_PREFIX + correlation_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
