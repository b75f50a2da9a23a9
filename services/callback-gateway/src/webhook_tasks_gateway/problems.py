"""RFC 9457 problem details: the errors the gateway answers with, and their JSON form.

    ProblemError                     any refusal; `response()` renders it
     ├── InvalidTokenError          401  the token was not minted for this correlation id
     ├── InvalidSignatureError      401  a signature required by the endpoint is missing or wrong
     ├── InvalidBodyError           400  unreadable or invalid body; `errors` names each field
     ├── InvalidHeaderError         400  a request header is unusable
     ├── BodyTooLargeError          413  over the body (or event) size limit
     ├── UnsupportedMediaTypeError  415  not JSON, or compressed
     ├── RateLimitedError           429  over the rate limit; carries Retry-After
     └── ServiceUnavailableError    503  the callback cannot be taken now; carries Retry-After
          ├── CallbackNotStoredError     Kafka did not take the callback
          └── GatewayBusyError           callbacks in progress hold the gateway's byte budget

Details never quote a token, a key or an exception's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

PROBLEM_TYPE_PREFIX = "urn:webhook-tasks:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemResponse(JSONResponse):
    """A JSON response served as application/problem+json."""

    media_type = PROBLEM_MEDIA_TYPE


def problem_response(
    status: int,
    *,
    detail: str,
    slug: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> ProblemResponse:
    """Return a problem+json response; without `slug` the type is about:blank."""
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_PREFIX}{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if extensions:
        body.update(extensions)
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


class ProblemError(Exception):
    """A refusal the client can act on, answered as problem+json."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Return the extra response headers this problem needs."""
        return {}

    def extensions(self) -> dict[str, Any]:
        """Return the extra members of the problem body."""
        return {}

    def response(self) -> ProblemResponse:
        """Render this problem."""
        return problem_response(
            self.status,
            detail=self.detail,
            slug=self.slug,
            title=self.title,
            headers=self.headers(),
            extensions=self.extensions(),
        )


class InvalidTokenError(ProblemError):
    """The callback URL's token does not verify for its correlation id."""

    status = 401
    slug = "invalid-callback-token"
    title = "Invalid callback token"

    def __init__(self) -> None:
        super().__init__("The callback URL is not valid for this correlation id.")


class InvalidSignatureError(ProblemError):
    """The endpoint requires a Standard Webhooks signature and this callback lacks a valid one."""

    status = 401
    slug = "invalid-signature"
    title = "Invalid signature"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where it is in the body and what is wrong with it."""

    location: tuple[str | int, ...]
    detail: str

    def as_json(self) -> dict[str, str]:
        """Return the `errors` entry: a JSON pointer, a dotted field name and the message."""
        pointer = "".join(
            "/" + str(part).replace("~", "~0").replace("/", "~1") for part in self.location
        )
        field = ".".join(str(part) for part in self.location) or "(body)"
        return {"pointer": f"#{pointer}", "field": field, "detail": self.detail}


class InvalidBodyError(ProblemError):
    """The body is not JSON, or not a valid callback; one `FieldError` per problem."""

    status = 400
    slug = "invalid-callback-body"
    title = "Invalid callback body"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        summary = "; ".join(
            f"{'.'.join(str(part) for part in error.location) or 'body'}: {error.detail}"
            for error in errors
        )
        super().__init__(f"The callback body is invalid: {summary}")
        self.errors = tuple(errors)

    def extensions(self) -> dict[str, Any]:
        """Return the `errors` member."""
        return {"errors": [error.as_json() for error in self.errors]}


class InvalidHeaderError(ProblemError):
    """A request header the gateway reads is unusable."""

    status = 400
    slug = "invalid-header"
    title = "Invalid header"


class BodyTooLargeError(ProblemError):
    """The body, or the event made from it, is over the configured limit."""

    status = 413
    slug = "callback-too-large"
    title = "Callback too large"


class UnsupportedMediaTypeError(ProblemError):
    """The body is not declared as JSON."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"

    def __init__(self, detail: str = "Send the callback as application/json.") -> None:
        super().__init__(detail)


class RateLimitedError(ProblemError):
    """Too many callbacks from this client, or for this correlation id; the sender should wait."""

    status = 429
    slug = "rate-limited"
    title = "Too many callbacks"

    def __init__(self, scope: str, retry_after_seconds: int) -> None:
        super().__init__(f"Too many callbacks {scope}; retry after {retry_after_seconds} s.")
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        """Return Retry-After."""
        return {"Retry-After": str(self.retry_after_seconds)}


def problem_slugs() -> set[str]:
    """Return the slug of every kind of problem the gateway answers with."""
    found: set[str] = set()
    pending: list[type[ProblemError]] = [ProblemError]
    while pending:
        kind = pending.pop()
        found.add(kind.slug)
        pending.extend(kind.__subclasses__())
    return found


class ServiceUnavailableError(ProblemError):
    """Nothing wrong with the callback, but it cannot be taken now: 503, retry after a while."""

    status = 503
    reason = "The callback cannot be taken right now; retry later."

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(self.reason)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        """Return Retry-After."""
        return {"Retry-After": str(self.retry_after_seconds)}


class CallbackNotStoredError(ServiceUnavailableError):
    """Kafka did not acknowledge the callback in time; the sender should retry."""

    slug = "callback-not-stored"
    title = "Callback not stored"
    reason = "The callback could not be stored right now; retry later."


class GatewayBusyError(ServiceUnavailableError):
    """The callbacks being handled hold as many bytes as the gateway may; the sender retries."""

    slug = "gateway-busy"
    title = "Gateway busy"
    reason = "The gateway is handling as much callback data as it may; retry later."
