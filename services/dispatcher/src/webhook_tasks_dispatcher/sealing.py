"""webhookAuth at rest: sealed while a request waits to be sent.

Sealed with AES-256-GCM under keys derived (HKDF-SHA256) from the callback keys, so
rotating those rotates these: the newest seals, every configured one opens. A sealed
value reads `sealed:v1:<key id>:<base64url(nonce + ciphertext)>` and names its task
(the correlation id is the associated data), so it cannot be moved to another task's
row. A stored value without the prefix was written before sealing existed and is
used as it is.

The sealed value is dropped once the request has been answered; what is kept to mask
the credential where a callback echoes it are its fingerprints (`CredentialFingerprints`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from webhook_tasks_contracts import CallbackKey
from webhook_tasks_contracts.credential_echoes import derive_key

_PREFIX = "sealed:v1:"
_INFO = b"webhook-tasks dispatcher request auth v1"
_NONCE_BYTES = 12


class SealError(Exception):
    """A stored secret cannot be opened (its key is gone, or it was altered)."""


class RequestSealer:
    """Seal and open the credentials kept with pending requests."""

    def __init__(self, keys: Sequence[CallbackKey]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._newest = keys[0].key_id
        self._ciphers = {key.key_id: AESGCM(derive_key(key.secret, _INFO)) for key in keys}

    def seal(self, correlation_id: str, secret: SecretStr) -> SecretStr:
        """Return `secret` sealed for `correlation_id` under the newest key."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._newest].encrypt(
            nonce, secret.get_secret_value().encode(), correlation_id.encode()
        )
        encoded = base64.urlsafe_b64encode(nonce + sealed).decode()
        return SecretStr(f"{_PREFIX}{self._newest}:{encoded}")

    def open(self, correlation_id: str, stored: SecretStr) -> SecretStr:
        """Return the secret `stored` holds for `correlation_id`; raise SealError if it can't."""
        value = stored.get_secret_value()
        if not value.startswith(_PREFIX):
            return stored
        key_id, _, encoded = value[len(_PREFIX) :].partition(":")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealError(
                f"the task's stored credentials were sealed with key {key_id!r}, "
                "which is no longer configured"
            )
        try:
            raw = base64.urlsafe_b64decode(encoded)
            opened = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], correlation_id.encode())
        except (ValueError, InvalidTag) as error:
            raise SealError("the task's stored credentials cannot be opened") from error
        return SecretStr(opened.decode())
