"""Field types shared by the event models and the HTTP payloads."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
)

MAX_URL_LENGTH = 8192
"""Long enough for pre-signed storage URLs (a session token alone can be 1-2 KB)."""
MAX_ERROR_LENGTH = 4000
MAX_MESSAGE_LENGTH = 1000
MAX_ID_LENGTH = 200

# Spaces, C0 controls and DEL: one regex search, not a Python loop over every character.
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")

Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)
]


# Scheme, plain host, optional port, then anything but spaces and controls: every such URL
# passes every rule of _checked_http_url by construction. urlsplit, run twice for each
# callback with a result URL, took about a fifth of the gateway's own time per callback.
_PLAIN_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]*)?(?:[/?#][^\x00-\x20\x7f]*)?")


def _require_http_url(value: str) -> str:
    if _PLAIN_HTTP_URL.fullmatch(value):
        return value
    return _checked_http_url(value)


def _checked_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    # HTTP clients refuse such URLs only when the request is built, long after validation.
    if _SPACE_OR_CONTROL.search(value):
        raise ValueError("must not contain spaces or control characters")
    # Credentials in a URL end up wherever the URL is stored, logged or shown.
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@)")
    return value


HttpUrlString = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_LENGTH),
    AfterValidator(_require_http_url),
]
"""An absolute http(s) URL kept exactly as given (pydantic's HttpUrl would normalise it)."""

CLIPPED_MARK = " [...]"
"""What ends a text cut to its field's limit."""


def clipped(limit: int) -> BeforeValidator:
    """Cut a longer text to `limit` characters, marked as cut, rather than refuse it."""

    def clip(value: Any) -> Any:
        # A service that sends a whole stack trace as its error still gets its outcome through:
        # refused, the callback's 4xx is final for it and the task would only time out.
        if isinstance(value, str) and len(value) > limit:
            return _clip(value, limit)
        return value

    return BeforeValidator(clip)


def _clip(text: str, limit: int) -> str:
    kept = text[: limit - len(CLIPPED_MARK)]
    if not text[len(kept)].isspace() and kept and not kept[-1].isspace():
        # The cut word goes whole: were it a credential the sender echoed, a part of it would
        # escape the masking that looks for whole credentials once the callback is parsed.
        words = kept.rsplit(maxsplit=1)
        kept = words[0] if len(words) == 2 else ""
    return (kept.rstrip() + CLIPPED_MARK).lstrip()


def _storable_instant(value: datetime) -> datetime:
    # 0001-01-01T00:00+01:00 is a valid time with a zone, yet in UTC it falls before year 1:
    # no consumer could store it, and its event would fail every delivery for good.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall within the years 1 to 9999 in UTC") from None
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_storable_instant)]
"""A time with its zone that every consumer can store."""

Progress = Annotated[float, Field(ge=0, le=100, strict=True)]
"""A percentage: a JSON number (not text, not a boolean) from 0 to 100."""


class StorableText(BaseModel):
    """A model whose text PostgreSQL can store: no NUL character in any field, nested or not.

    Refused here, such input is a clear 400 at the gateway and a dead letter on Kafka;
    let through, it would fail the consumer's write again on every redelivery.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        if _holds_nul(value):
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value


def _holds_nul(value: Any) -> bool:
    # Runs for every field of every event built or parsed: the common kinds are tested first,
    # and containers are walked in plain loops (a generator under any() cost 1.6 times as much).
    if value is None:
        return False
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        for key, item in value.items():  # noqa: SIM110 (see above)
            if _holds_nul(key) or _holds_nul(item):
                return True
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:  # noqa: SIM110 (see above)
            if _holds_nul(item):
                return True
        return False
    if isinstance(value, SecretStr):
        return "\x00" in value.get_secret_value()
    return False
