"""HTTP payloads of the product summary: the request we send, its acknowledgement, the callback.

Field names are camelCase on the wire, as in the product summary; Python code uses
snake_case attributes. Unknown fields in what external services send are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.alias_generators import to_camel

from ._validators import (
    CLIPPED_MARK,
    MAX_ERROR_LENGTH,
    MAX_MESSAGE_LENGTH,
    HttpUrlString,
    Identifier,
    Progress,
    StorableText,
    clipped,
)

RESERVED_REQUEST_FIELDS = frozenset(
    {"correlationId", "callbackUrl", "prompt", "taskId", "userId", "projectId"}
)
"""Fields of the webhook request that `webhookParams` may not override."""

DEFAULT_ERROR = "The external service reported an error."
"""An error callback's reason when it gives none."""


class _WireModel(StorableText):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class WebhookRequest(_WireModel):
    """The body we POST to `webhookUrl`; `webhookParams` are merged in at top level."""

    model_config = ConfigDict(extra="allow")

    correlation_id: str
    callback_url: str
    prompt: str
    task_id: str
    user_id: str
    project_id: str


def build_webhook_request(
    *,
    correlation_id: str,
    callback_url: str,
    prompt: str,
    task_id: str,
    user_id: str,
    project_id: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Return the JSON body of the request to the external service."""
    reserved = {
        "correlationId": correlation_id,
        "callbackUrl": callback_url,
        "prompt": prompt,
        "taskId": task_id,
        "userId": user_id,
        "projectId": project_id,
    }
    # Reserved fields win: a parameter must never redirect the callback or the correlation.
    return {**params, **reserved}


class WebhookAck(_WireModel):
    """The external service's immediate answer, such as `{"status": "accepted"}`."""

    status: str | None = Field(default=None, max_length=100)
    # The product summary shows a timestamp, yet services also send seconds; kept as text.
    estimated_completion: str | None = Field(
        default=None, max_length=100, coerce_numbers_to_str=True
    )

    @field_validator("*", mode="wrap")
    @classmethod
    def _none_if_unusable(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # One odd field must not cost the others; this wraps the base class's NUL check too,
        # so a NUL still never gets through but drops only its own field.
        try:
            return handler(value)
        except ValidationError:
            return None


class SuccessCallback(_WireModel):
    """The external service finished: `resultUrl` and optional `metadata` become the comment."""

    correlation_id: Identifier
    status: Literal["success"]
    result_url: HttpUrlString | None = None
    metadata: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"type": ["object", "null"]}
    )

    @field_validator("result_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata_is_none_given(cls, value: Any) -> Any:
        return {} if value is None else value


class ErrorCallback(_WireModel):
    """The external service gave up: `error` is the reason shown to the user."""

    correlation_id: Identifier
    status: Literal["error"]
    error: Annotated[str, clipped(MAX_ERROR_LENGTH)] = Field(
        default=DEFAULT_ERROR,
        description=f"Shown to the user. Null or blank: the default. Longer than "
        f"{MAX_ERROR_LENGTH} characters: cut at a word, ending in {CLIPPED_MARK.strip()}.",
        json_schema_extra={"type": ["string", "null"]},
    )

    @field_validator("error", mode="before")
    @classmethod
    def _null_error_is_none_given(cls, value: Any) -> Any:
        return (
            DEFAULT_ERROR
            if value is None or (isinstance(value, str) and not value.strip())
            else value
        )


class ProgressCallback(_WireModel):
    """A heartbeat: the task is still running; it extends the deadline."""

    correlation_id: Identifier
    status: Literal["progress"]
    progress: Progress | None = None
    message: Annotated[str | None, clipped(MAX_MESSAGE_LENGTH)] = Field(
        default=None,
        description=f"Longer than {MAX_MESSAGE_LENGTH} characters: cut at a word, ending in "
        f"{CLIPPED_MARK.strip()}.",
    )


CallbackBody = Annotated[
    SuccessCallback | ErrorCallback | ProgressCallback, Field(discriminator="status")
]
"""The body an external service POSTs to its `callbackUrl`."""

callback_body_adapter: TypeAdapter[SuccessCallback | ErrorCallback | ProgressCallback] = (
    TypeAdapter(CallbackBody)
)
