"""What a callback request must be, and the CallbackReceived event it becomes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.types import Receive
from webhook_tasks_contracts import (
    CallbackReceived,
    ErrorCallback,
    ProgressCallback,
    SuccessCallback,
    callback_body_adapter,
    derived_event_id,
)

from .problems import (
    BodyTooLargeError,
    FieldError,
    InvalidBodyError,
    InvalidHeaderError,
    UnsupportedMediaTypeError,
)

Callback = SuccessCallback | ErrorCallback | ProgressCallback

MAX_DELIVERY_ID_LENGTH = 200
_MAX_REPORTED_ERRORS = 20
_STATUSES = "success, error, progress"
_NOT_FINITE = "must be a finite number; NaN, Infinity and numbers beyond 1.8e308 are refused"


def require_json(content_type: str | None) -> None:
    """Refuse a body not declared as application/json or application/*+json."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type == "application/json":
        return
    if media_type.startswith("application/") and media_type.endswith("+json"):
        return
    raise UnsupportedMediaTypeError()


def require_identity_encoding(content_encoding: str | None) -> None:
    """Refuse a body sent compressed: the gateway reads, verifies and stores it as sent."""
    coding = (content_encoding or "").strip().lower()
    if coding and coding != "identity":
        # Else a gzip body was refused as invalid JSON, and a mislabelled one accepted.
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {coding[:40]!r} is not accepted: send the body uncompressed."
        )


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """Return the first value of header `name` (lower case) among ASGI `headers`, or None."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(
    receive: Receive, declared: str | None, limit: int, hold: Callable[[int], None]
) -> bytes:
    """Return the body (`declared`: its Content-Length), refused once known to exceed `limit`.

    `hold` is told the size of each part as it arrives, and may refuse it by raising.
    """
    if declared is not None and declared.isascii() and declared.isdigit():
        digits = declared.lstrip("0")
        # Longer than the limit's digits is larger: int() would refuse thousands of them.
        if len(digits) > len(str(limit)) or int(digits or "0") > limit:
            raise BodyTooLargeError(f"The declared body exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    # Content-Length may be absent (chunked) or wrong, so count what actually arrives.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidBodyError(
                [FieldError((), "the client disconnected before sending the body")]
            )
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"The body exceeds the limit of {limit} bytes.")
        hold(len(chunk))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_callback(body: bytes, correlation_id: str) -> Callback:
    """Validate `body` as a callback for `correlation_id`."""
    try:
        callback = callback_body_adapter.validate_json(body)
    except ValidationError as error:
        details = error.errors(include_url=False, include_input=False, include_context=False)
        raise InvalidBodyError(
            [_field_error(item) for item in details[:_MAX_REPORTED_ERRORS]]
        ) from None
    if callback.correlation_id != correlation_id:
        raise InvalidBodyError(
            [FieldError(("correlationId",), "does not match the correlation id in the URL")]
        )
    # pydantic's parser takes NaN, Infinity and 1e999, which would be published as null.
    # Only metadata can carry one to Kafka: progress, the one number field, is 0 to 100.
    if isinstance(callback, SuccessCallback):
        location = _non_finite_number(callback.metadata)
        if location is not None:
            raise InvalidBodyError([FieldError(("metadata", *location), _NOT_FINITE)])
    return callback


def delivery_id(value: str | None) -> str | None:
    """Return the sender's `webhook-id` header value, when it sent one."""
    if value is not None and len(value) > MAX_DELIVERY_ID_LENGTH:
        raise InvalidHeaderError(f"webhook-id is longer than {MAX_DELIVERY_ID_LENGTH} characters.")
    if value is not None and "\x00" in value:
        raise InvalidHeaderError("webhook-id must not contain the NUL character.")
    return value or None


def delivery_event_id(correlation_id: str, delivery: str | None, body: bytes) -> UUID | None:
    """Return the same event id for the same webhook-id and bytes; None without a webhook-id."""
    # A sender retries with the same webhook-id (after a timeout, or after a 503 whose message
    # reached Kafka after all); consumers skip an event id seen before, so the retry changes
    # nothing. The body is hashed in so a webhook-id reused for other content is no retry.
    if delivery is None:
        return None
    return derived_event_id("callback", correlation_id, delivery, hashlib.sha256(body).hexdigest())


def callback_event(
    callback: Callback, *, delivery: str | None, event_id: UUID | None = None
) -> CallbackReceived:
    """Return the event that records `callback`; a fresh event id unless `event_id` is given."""
    envelope = {} if event_id is None else {"event_id": event_id}
    match callback:
        case SuccessCallback():
            return CallbackReceived(
                **envelope,
                correlation_id=callback.correlation_id,
                status=callback.status,
                result_url=callback.result_url,
                metadata=callback.metadata,
                delivery_id=delivery,
            )
        case ErrorCallback():
            return CallbackReceived(
                **envelope,
                correlation_id=callback.correlation_id,
                status=callback.status,
                error=callback.error,
                delivery_id=delivery,
            )
        case ProgressCallback():
            return CallbackReceived(
                **envelope,
                correlation_id=callback.correlation_id,
                status=callback.status,
                progress=callback.progress,
                message=callback.message,
                delivery_id=delivery,
            )


def _non_finite_number(value: object) -> tuple[str | int, ...] | None:
    # The location of the first NaN or infinity in parsed JSON; built only once one is found.
    if isinstance(value, float):
        return None if math.isfinite(value) else ()
    if isinstance(value, dict):
        items: Iterable[tuple[str | int, object]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        location = _non_finite_number(item)
        if location is not None:
            return (key, *location)
    return None


def _field_error(item: ErrorDetails) -> FieldError:
    kind = item["type"]
    if kind == "union_tag_not_found":
        return FieldError(("status",), f"Field required: one of {_STATUSES}")
    if kind == "union_tag_invalid":
        return FieldError(("status",), f"Input should be one of {_STATUSES}")
    # Below the root, pydantic puts the union tag (the status) first; the wire has no such level.
    return FieldError(tuple(item["loc"][1:]), item["msg"])
