"""Keyed fingerprints of a task's credential, to mask it wherever a callback echoes it.

An external service may echo the webhookAuth it was sent (a request dump in its
metadata, `?auth=` in a result URL, an error quoting the header). Neither the
gateway nor the dispatcher keeps the credential to look for, so the dispatcher
fingerprints it when it records the task: HMAC-SHA256 (truncated) under a key
derived (HKDF-SHA256) from the callback key that mints the task's token, of the
whole value, of what follows its scheme word (`Bearer <this>`), and of a Basic
credential's password. The fingerprints are stored with the task and carried in
its callback token, so the gateway masks an echo before the callback reaches
Kafka, and the dispatcher masks one in a callback the gateway accepted under an
older token.

A text is cut into tokens, and every token whose fingerprint is among them is
masked; so is a credential percent-encoded in a URL (`?auth=Bearer%20...`, `+`
for a space, hex in either case), found by the fingerprints of its decoded form.
Stored, fingerprints read `v1:<key id>:<base64url(digests)>`; those of a key no
longer configured match nothing.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from .events import CallbackReceived

if TYPE_CHECKING:
    from .callback_token import CallbackKey

Masker = Callable[[str], str]
"""Return a text with every echo of one credential in it masked."""

_INFO = b"webhook-tasks dispatcher auth fingerprints v1"
_VERSION = "v1"
DIGEST_BYTES = 16
MAX_DIGESTS = 3
"""A credential has at most three fingerprinted parts: whole, after its scheme, password."""
_SHORTEST_FINGERPRINTED = 6
"""Shorter parts of a credential are not looked for: they would mask ordinary words."""
_MASK = "**********"
_TOKEN = re.compile(r"[^\s\"'`<>()\[\]{},;|\\]+")
"""A run of characters a credential may be made of, delimited as texts around them do."""
_SUBTOKEN_SEPARATORS = re.compile(r"[=:&/?#@]")
"""Inside a token: `token=<secret>`, `key:<secret>`, a URL's query or path."""
_MOST_SEPARATORS = 12
"""Separators a credential may hold itself: the spans looked at grow with it, once per start."""


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """The fingerprints of one credential, under the callback key named `key_id`."""

    key_id: str
    digests: bytes

    def __str__(self) -> str:
        encoded = base64.urlsafe_b64encode(self.digests).decode()
        return f"{_VERSION}:{self.key_id}:{encoded}"

    @classmethod
    def parse(cls, stored: str) -> Fingerprints | None:
        """Return the fingerprints `stored` (as str() wrote them) holds; None if it is not one."""
        version, _, rest = stored.partition(":")
        key_id, _, encoded = rest.partition(":")
        if version != _VERSION:
            return None
        try:
            digests = base64.b64decode(encoded, altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            return None
        return cls(key_id, digests)

    @property
    def well_formed(self) -> bool:
        """Return whether the digests are whole and at most as many as a credential has."""
        count, rest = divmod(len(self.digests), DIGEST_BYTES)
        return rest == 0 and 0 < count <= MAX_DIGESTS


class CredentialFingerprints:
    """Fingerprint credentials under the newest callback key; mask under any configured one."""

    def __init__(self, keys: Sequence[CallbackKey]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._newest = keys[0].key_id
        self._keys = {key.key_id: derive_key(key.secret, _INFO) for key in keys}

    def of(self, secret: SecretStr) -> Fingerprints | None:
        """Return the fingerprints of `secret` under the newest key; None if it is too short."""
        key = self._keys[self._newest]
        digests = sorted({_digest(key, part) for part in _credential_parts(secret)})
        return Fingerprints(self._newest, b"".join(digests)) if digests else None

    def masker(self, fingerprints: Fingerprints | str | None) -> Masker | None:
        """Return a function that masks in a text what `fingerprints` match; None if nothing can."""
        if isinstance(fingerprints, str):
            fingerprints = Fingerprints.parse(fingerprints)
        if fingerprints is None or not fingerprints.well_formed:
            return None
        key = self._keys.get(fingerprints.key_id)
        if key is None:
            return None
        raw = fingerprints.digests
        known = {raw[at : at + DIGEST_BYTES] for at in range(0, len(raw), DIGEST_BYTES)}
        return lambda text: _masked(text, key, known)

    def mask_callback(
        self, callback: CallbackReceived, fingerprints: Fingerprints | str | None
    ) -> CallbackReceived:
        """Return `callback` with every echo in its sender's texts masked; itself if none."""
        mask = self.masker(fingerprints)
        return callback if mask is None else _mask_callback(callback, mask)


def _mask_callback(callback: CallbackReceived, mask: Masker) -> CallbackReceived:
    masked = {
        "result_url": callback.result_url and mask(callback.result_url),
        "error": callback.error and mask(callback.error),
        "message": callback.message and mask(callback.message),
        "metadata": mask_strings(callback.metadata, mask),
    }
    if all(masked[field] == getattr(callback, field) for field in masked):
        return callback
    # Not validated again: a masked URL or text is still what the sender sent, less the secret.
    return callback.model_copy(update=masked)


def mask_strings(value: Any, mask: Masker) -> Any:
    """Return `value` (JSON-like) with `mask` applied to every string in it, keys too."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        # An echoed request's headers may be keyed by the credential itself.
        keys = {key: mask(key) if isinstance(key, str) else key for key in value}
        taken = {key for key, new in keys.items() if new == key}
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            new = keys[key]
            if new != key and (new in taken or new in masked):
                new = _unused_key(new, taken | masked.keys())  # no key overwrites another
            masked[new] = mask_strings(item, mask)
        return masked
    if isinstance(value, list):
        return [mask_strings(item, mask) for item in value]
    return value


def credential_masker(secret: SecretStr) -> Masker:
    """Return a function that masks `secret` and its parts in a text: plain, JSON-escaped, encoded.

    For the dispatcher, which holds the credential while it talks to the service: an answer
    is stored (and a sync answer read) as text, where a JSON string may escape the credential.
    """
    value = secret.get_secret_value()
    parts = _credential_parts(secret) | ({value, value.strip()} - {""})
    forms = set()
    for part in parts:
        for escaped in (part, json.dumps(part)[1:-1], json.dumps(part, ensure_ascii=False)[1:-1]):
            forms |= {escaped, escaped.replace("/", "\\/")}
    # Longest first: where a part and the whole value both start, the whole is masked.
    plain = sorted(forms, key=len, reverse=True)
    encoded: list[re.Pattern[str]] = []

    def mask(text: str) -> str:
        if "%" in text or "+" in text:
            # Built on first need: compiling costs more than most answers take to mask.
            if not encoded:
                alternatives = sorted(parts, key=len, reverse=True)
                encoded.append(
                    re.compile("|".join(_percent_encoded(part).pattern for part in alternatives))
                )
            text = encoded[0].sub(_MASK, text)
        for form in plain:
            if form in text:
                text = text.replace(form, _MASK)
        return text

    return mask


def _unused_key(key: str, taken: Set[Any]) -> str:
    count = 2
    while f"{key} ({count})" in taken:
        count += 1
    return f"{key} ({count})"


def derive_key(secret: bytes, info: bytes) -> bytes:
    """Return a 32-byte key for the use `info` names, derived from a callback key's secret."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(secret)


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
    if len(text) < _SHORTEST_FINGERPRINTED:
        return text  # most metadata keys: nothing so short is looked for
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
    return hmac.new(key, part.encode(), hashlib.sha256).digest()[:DIGEST_BYTES]
