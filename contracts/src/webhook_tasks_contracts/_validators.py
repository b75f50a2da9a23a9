"""Field types shared by the event models and the HTTP payloads."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints

MAX_URL_LENGTH = 2048
MAX_ERROR_LENGTH = 4000
MAX_ID_LENGTH = 200

Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)
]


def _require_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    return value


HttpUrlString = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_LENGTH),
    AfterValidator(_require_http_url),
]
"""An absolute http(s) URL kept exactly as given (pydantic's HttpUrl would normalise it)."""

Progress = Annotated[float, Field(ge=0, le=100)]
