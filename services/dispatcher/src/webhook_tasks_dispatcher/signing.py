"""Standard Webhooks signatures on outbound requests, with a secret chosen per endpoint."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import SecretStr

_PREFIX = "whsec_"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_ENCODED_UNRESERVED = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")
"""A %-encoded letter, digit, "-", ".", "_" or "~": the same character to a server."""
_ENCODED_SEPARATOR = re.compile(r"%2[fF]|%5[cC]|\\")
"""A slash or backslash that some servers take as a separator and others as a character."""
_ANY_SEPARATOR = re.compile(r"/|%2[fF]|%5[cC]|\\")

_Origin = tuple[str, str, int | None]
"""Scheme, host (lower case, no trailing dot) and port (the scheme's default when absent)."""


class SigningKeyError(ValueError):
    """A configured signing secret is not a valid `whsec_` secret (the message names no secret)."""


def decode_secret(secret: str) -> bytes:
    """Return the key bytes of a `whsec_<base64>` secret."""
    encoded = secret.removeprefix(_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError as error:
        raise SigningKeyError("a signing secret is not valid base64 after 'whsec_'") from error
    if len(key) < 16:
        raise SigningKeyError("a signing secret must decode to at least 16 bytes")
    return key


def webhook_id_of(correlation_id: str) -> str:
    """Return the `webhook-id` of a task's request: the same on every retry, so receivers dedupe."""
    return f"msg_{correlation_id}"


def signature_headers(
    key: bytes, *, webhook_id: str, timestamp: datetime, body: bytes
) -> dict[str, str]:
    """Return the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers."""
    seconds = str(int(timestamp.timestamp()))
    signed = f"{webhook_id}.{seconds}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": seconds,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


class SigningKeys:
    """Which secret signs a request to which URL: longest URL prefix, else host, else `*`."""

    def __init__(self, secrets: Mapping[str, SecretStr]) -> None:
        self._prefixes: list[tuple[_Origin, str, bytes]] = []
        self._hosts: dict[str, bytes] = {}
        self._default: bytes | None = None
        for target, secret in secrets.items():
            key = decode_secret(secret.get_secret_value())
            if target == "*":
                self._default = key
            elif "://" in target:
                split = _split(target)
                if split is None:
                    # Not quoted: a URL may carry credentials.
                    raise ValueError("a signing target URL has no host or an invalid port")
                origin, path = split
                self._prefixes.append((origin, path, key))
            else:
                self._hosts[target.lower().rstrip(".")] = key
        self._prefixes.sort(key=lambda item: len(item[1]), reverse=True)

    def __repr__(self) -> str:
        return f"SigningKeys({len(self._prefixes) + len(self._hosts)} endpoints)"

    def key_for(self, url: str) -> bytes | None:
        """Return the key that signs requests to `url`; None means unsigned."""
        split = _split(url)
        if split is None:
            return self._default
        origin, path = split
        for prefix_origin, prefix_path, key in self._prefixes:
            if origin == prefix_origin and _within(path, prefix_path):
                return key
        return self._hosts.get(origin[1], self._default)


@functools.lru_cache(maxsize=4096)
def _split(url: str) -> tuple[_Origin, str] | None:
    # Parsed, not compared as text: "https://a.com" is a prefix of "https://a.com.evil.net".
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    return (parts.scheme, parts.hostname.rstrip("."), port), resolved_path(parts.path)


def resolved_path(path: str) -> str:
    """Return `path` as the server resolves it: encoded letters decoded, "." and ".." applied."""
    # Else "/tenant-b/../tenant-a/hook", or "/tenant-b/%2e%2e/...", would be signed with
    # tenant-b's secret and delivered to tenant-a, which could replay it to tenant-b.
    decoded = _unreserved_decoded(path)
    resolved: list[str] = []
    segments = decoded.split("/")[1:] if decoded.startswith("/") else decoded.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment != ".":
            resolved.append(segment)
            continue
        if last:
            resolved.append("")  # "/a/b/.." is "/a/", a directory
    return "/" + "/".join(resolved)


def ambiguous_path(path: str) -> bool:
    """Tell whether servers may resolve `path` differently: "." or ".." by an encoded slash."""
    # Some servers (nginx) decode "%2F" and then apply "..": "/tenant-b/..%2Ftenant-a/hook" is
    # tenant-a's there, and tenant-b's to resolved_path, which keeps "%2F" as a character.
    decoded = _unreserved_decoded(path)
    if not _ENCODED_SEPARATOR.search(decoded):
        return False
    return any(segment in (".", "..") for segment in _ANY_SEPARATOR.split(decoded))


def _unreserved_decoded(path: str) -> str:
    """Return `path` with its %-encoded letters, digits and "-._~" decoded, as servers read them."""
    return _ENCODED_UNRESERVED.sub(lambda found: chr(int(found.group(1), 16)), path)


def _within(path: str, prefix: str) -> bool:
    # At a segment boundary: "/v1" covers "/v1/x" but not "/v10".
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")
