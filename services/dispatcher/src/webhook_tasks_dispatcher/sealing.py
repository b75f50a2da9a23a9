"""webhookAuth at rest: sealed while a request waits to be sent, fingerprinted after.

Sealed with AES-256-GCM under keys derived (HKDF-SHA256) from the callback keys, so
rotating those rotates these: the newest seals, every configured one opens. A sealed
value reads `sealed:v1:<key id>:<base64url(nonce + ciphertext)>` and names its task
(the correlation id is the associated data), so it cannot be moved to another task's
row. A stored value without the prefix was written before sealing existed and is
used as it is.

The sealed value is dropped once the request has been answered, but an external service
may still echo the credential in its callback. So the task keeps keyed fingerprints
(HMAC-SHA256, truncated) of it: of the whole value, of what follows its scheme word
(`Bearer <this>`), and of a Basic credential's password. A callback's texts are cut into
tokens, and every token whose fingerprint is among them is masked; so is a credential
percent-encoded in a URL (`?auth=Bearer%20...`, `+` for a space, hex in either case),
found by the fingerprints of its decoded form. Fingerprints read
`v1:<key id>:<base64url(digests)>`; those of a key no longer configured match nothing.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr
from webhook_tasks_contracts import CallbackKey

_PREFIX = "sealed:v1:"
_INFO = b"webhook-tasks dispatcher request auth v1"
_FINGERPRINT_INFO = b"webhook-tasks dispatcher auth fingerprints v1"
_FINGERPRINT_VERSION = "v1"
_NONCE_BYTES = 12
_DIGEST_BYTES = 16
_SHORTEST_FINGERPRINTED = 6
"""Shorter parts of a credential are not looked for: they would mask ordinary words."""
_MASK = "**********"
_TOKEN = re.compile(r"[^\s\"'`<>()\[\]{},;|\\]+")
"""A run of characters a credential may be made of, delimited as texts around them do."""
_SUBTOKEN_SEPARATORS = re.compile(r"[=:&/?#@]")
"""Inside a token: `token=<secret>`, `key:<secret>`, a URL's query or path."""
_MOST_SEPARATORS = 12
"""Separators a credential may hold itself: the spans looked at grow with it, once per start."""


class SealError(Exception):
    """A stored secret cannot be opened (its key is gone, or it was altered)."""


class RequestSealer:
    """Seal and open the credentials kept with pending requests."""

    def __init__(self, keys: Sequence[CallbackKey]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._newest = keys[0].key_id
        self._ciphers = {key.key_id: AESGCM(_derive(key.secret)) for key in keys}
        self._fingerprint_keys = {
            key.key_id: _derive(key.secret, _FINGERPRINT_INFO) for key in keys
        }

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

    def fingerprint(self, secret: SecretStr) -> str:
        """Return keyed fingerprints of `secret` and of its credential parts, to store."""
        key = self._fingerprint_keys[self._newest]
        digests = sorted({_digest(key, part) for part in _credential_parts(secret)})
        encoded = base64.urlsafe_b64encode(b"".join(digests)).decode()
        return f"{_FINGERPRINT_VERSION}:{self._newest}:{encoded}"

    def masker(self, fingerprints: str | None) -> Callable[[str], str] | None:
        """Return a function that masks in a text what `fingerprints` match; None if nothing can."""
        if fingerprints is None:
            return None
        version, _, rest = fingerprints.partition(":")
        key_id, _, encoded = rest.partition(":")
        key = self._fingerprint_keys.get(key_id)
        if version != _FINGERPRINT_VERSION or key is None:
            return None
        try:
            raw = base64.b64decode(encoded, altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            return None
        if not raw or len(raw) % _DIGEST_BYTES:
            return None
        known = {raw[at : at + _DIGEST_BYTES] for at in range(0, len(raw), _DIGEST_BYTES)}
        return lambda text: _masked(text, key, known)


def mask_strings(value: Any, mask: Callable[[str], str]) -> Any:
    """Return `value` (JSON-like) with `mask` applied to every string in it, keys aside."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: mask_strings(item, mask) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_strings(item, mask) for item in value]
    return value


def _credential_parts(secret: SecretStr) -> set[str]:
    """Return the value, what follows its scheme word, and a Basic credential's password."""
    value = secret.get_secret_value().strip()
    parts = {value}
    scheme, _, credentials = value.partition(" ")
    credentials = credentials.strip()
    if credentials:
        parts.add(credentials)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (ValueError, binascii.Error, UnicodeDecodeError):
                decoded = ""
            parts.add(decoded.partition(":")[2])
    return {part for part in parts if len(part) >= _SHORTEST_FINGERPRINTED}


def _masked(text: str, key: bytes, known: set[bytes]) -> str:
    found: set[str] = set()
    encoded: set[str] = set()
    for token in _TOKEN.findall(text):
        candidates = _candidates(token)
        found.update(candidate for candidate in candidates if _digest(key, candidate) in known)
        if "%" in token or "+" in token:
            # Only the decoded parts not looked at already: most are the same text.
            decoded = _candidates(unquote_plus(token)) - candidates
            encoded.update(candidate for candidate in decoded if _digest(key, candidate) in known)
    # Longest first: a credential inside a longer matched value is masked with it.
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    for secret in sorted(encoded, key=len, reverse=True):
        text = _percent_encoded(secret).sub(_MASK, text)
    return text


def _percent_encoded(secret: str) -> re.Pattern[str]:
    """Return a pattern of `secret` as a URL may carry it: each character as is or %-encoded."""
    forms = []
    for char in secret:
        escaped = "".join(
            "%" + "".join(f"[{digit.upper()}{digit.lower()}]" for digit in f"{byte:02x}")
            for byte in char.encode("utf-8", "surrogatepass")
        )
        alternatives = [re.escape(char), escaped, *(["\\+"] if char == " " else [])]
        forms.append("(?:" + "|".join(alternatives) + ")")
    return re.compile("".join(forms))


def _candidates(token: str) -> set[str]:
    """Return the parts of `token` that start and end at its edges or at separators in it."""
    separators = list(_SUBTOKEN_SEPARATORS.finditer(token))
    starts = [0, *(found.end() for found in separators)]
    ends = sorted({len(token), *(found.start() for found in separators), *starts[1:]})
    spans: set[str] = set()
    # From every start, however long the token (a URL with many parameters), to the ends
    # that leave at most _MOST_SEPARATORS separators inside: linear in the token's length.
    for start in starts:
        first = bisect.bisect_right(ends, start)
        spans.update(token[start:end] for end in ends[first : first + 2 * _MOST_SEPARATORS + 1])
    # A sentence's full stop is not part of what it quotes.
    spans |= {span.rstrip(".!?") for span in spans}
    return {span for span in spans if len(span) >= _SHORTEST_FINGERPRINTED}


def _digest(key: bytes, part: str) -> bytes:
    return hmac.new(key, part.encode(), hashlib.sha256).digest()[:_DIGEST_BYTES]


def _derive(secret: bytes, info: bytes = _INFO) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(secret)
