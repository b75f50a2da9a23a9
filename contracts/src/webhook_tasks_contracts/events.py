"""Events on Kafka: a versioned envelope and one model per event type.

Every event carries `event_id` (consumers deduplicate on it), `type`,
`schema_version`, `occurred_at` and, once the dispatcher has minted one,
`correlation_id`. Messages are keyed by correlation id (task id before one exists),
so one task's events stay ordered within a partition.

Secrets (`webhookAuth`) travel only on `TaskRequested`, from the upstream system
to the dispatcher; no event the services publish carries one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ._validators import HttpUrlString, Identifier, Instant, Progress, StorableText
from .payloads import RESERVED_REQUEST_FIELDS

SCHEMA_VERSION = 1
DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
REVEAL_SECRETS = "reveal_secrets"
"""Serialization context key that lets the upstream publisher send `webhookAuth` in clear."""

_EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "urn:webhook-tasks:event")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def utc_now() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def derived_event_id(*parts: object) -> UUID:
    """Return a deterministic event id, so an event re-derived from the same input keeps its id."""
    return uuid5(_EVENT_ID_NAMESPACE, "/".join(str(part) for part in parts))


class Event(StorableText):
    """The envelope every event shares."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: Literal[1] = 1
    occurred_at: Instant = Field(default_factory=utc_now)


class TaskMetadata(StorableText):
    """How a task is run as a webhook task (`taskMetadata` of the product summary)."""

    # hide_input_in_errors: an error about webhookAuth must not quote it.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,
    )

    is_webhook_task: bool = False
    webhook_url: HttpUrlString | None = None
    webhook_auth: SecretStr | None = Field(default=None, max_length=4096)
    webhook_params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: int = Field(default=DEFAULT_TIMEOUT_SECONDS, ge=1, le=MAX_TIMEOUT_SECONDS)
    mode: Literal["callback", "sync"] = "callback"
    callback_endpoint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Bind the callback URL to this endpoint name; the gateway then requires callbacks
    signed with the endpoint's Standard Webhooks secret (GATEWAY_SIGNING_SECRETS)."""

    @field_validator("webhook_auth")
    @classmethod
    def _auth_is_a_header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty value authenticates nothing: send no header
        # Sent as the Authorization header: anything else fails when the request is built.
        if not _HEADER_VALUE.fullmatch(value.get_secret_value()):
            raise ValueError("webhookAuth must be printable ASCII (an HTTP header value)")
        return value

    @field_validator("webhook_params", mode="before")
    @classmethod
    def _null_params_are_none_given(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("webhook_params")
    @classmethod
    def _params_keep_reserved_fields(cls, params: dict[str, Any]) -> dict[str, Any]:
        clashes = sorted(RESERVED_REQUEST_FIELDS.intersection(params))
        if clashes:
            raise ValueError(f"webhookParams may not set reserved fields: {', '.join(clashes)}")
        return params

    @model_validator(mode="after")
    def _webhook_task_has_url(self) -> TaskMetadata:
        if self.is_webhook_task and self.webhook_url is None:
            raise ValueError("webhookUrl is required when isWebhookTask is true")
        return self

    @field_serializer("webhook_auth")
    def _serialize_auth(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        if value is None:
            return None
        context = info.context or {}
        return value.get_secret_value() if context.get(REVEAL_SECRETS) else "**********"


def _says_webhook_task(metadata: Any) -> bool:
    """Return whether raw task metadata asks for a webhook task, read as TaskMetadata reads it."""
    if isinstance(metadata, TaskMetadata):
        return metadata.is_webhook_task
    if not isinstance(metadata, dict):
        return True  # not metadata at all: let its error stand
    flag = metadata.get("isWebhookTask", metadata.get("is_webhook_task", False))
    try:
        return _LAX_BOOL.validate_python(flag)
    except ValidationError:
        return True  # neither yes nor no: the error says so


_LAX_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


class TaskRequested(Event):
    """An upstream system asks for a task to run. Keyed by `task_id`."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, hide_input_in_errors=True
    )

    type: Literal["task.requested"] = "task.requested"
    task_id: Identifier
    user_id: Identifier
    project_id: Identifier
    assistant_id: Identifier | None = None
    prompt: str = Field(max_length=100_000)
    followers: list[Identifier] = Field(default_factory=list, max_length=1000)
    request_id: Identifier | None = None
    """Idempotency key of this request; `event_id` when absent."""
    task_metadata: TaskMetadata = Field(default_factory=TaskMetadata)

    @field_validator("task_metadata", mode="wrap")
    @classmethod
    def _only_webhook_tasks_need_webhook_settings(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> TaskMetadata:
        # Other tasks share the topic, and their metadata is none of the webhook settings'
        # business: such a task is ignored, not dead-lettered for a field it does not use.
        if value is None:
            return TaskMetadata()
        try:
            metadata: TaskMetadata = handler(value)
        except ValidationError:
            if _says_webhook_task(value):
                raise
            return TaskMetadata()
        return metadata

    @property
    def idempotency_key(self) -> str:
        """Return the key that makes a repeated request a duplicate."""
        # The task id escaped, so the first "/" ends it: unescaped, task "a/b" with request
        # "c" and task "a" with request "b/c" had one key, and the second was dropped.
        task_id = self.task_id.replace("%", "%25").replace("/", "%2F")
        return f"{task_id}/{self.request_id or self.event_id}"


class TaskRef(StorableText):
    """Who a task belongs to, carried on every lifecycle event so consumers need no lookup."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    user_id: str
    project_id: str
    assistant_id: str | None = None
    followers: tuple[str, ...] = ()


class LifecycleEvent(Event):
    """A task transition decided by the dispatcher. Keyed by `correlation_id`."""

    correlation_id: str
    task: TaskRef


class TaskDispatched(LifecycleEvent):
    """The external service accepted the request; the deadline starts."""

    type: Literal["task.dispatched"] = "task.dispatched"
    deadline_at: Instant
    timeout_seconds: int
    webhook_host: str
    ack_status: str | None = None
    estimated_completion: str | None = None
    mode: Literal["callback", "sync"] = "callback"
    """How the result comes: by callback, or in the answer itself (the task then ends at once)."""


class TaskProgressed(LifecycleEvent):
    """The external service reported progress; the deadline moves to `deadline_at`."""

    type: Literal["task.progressed"] = "task.progressed"
    deadline_at: Instant
    progress: Progress | None = None
    message: str | None = None


class TaskCompleted(LifecycleEvent):
    """Terminal: the external service delivered a result."""

    type: Literal["task.completed"] = "task.completed"
    result_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


FailureCause = Literal["callback_error", "dispatch_rejected", "dispatch_unreachable"]


class TaskFailed(LifecycleEvent):
    """Terminal: the external service reported an error, or could not be reached."""

    type: Literal["task.failed"] = "task.failed"
    cause: FailureCause
    reason: str


class TaskExpired(LifecycleEvent):
    """Terminal: no result arrived before the deadline."""

    type: Literal["task.expired"] = "task.expired"
    deadline_at: Instant
    timeout_seconds: int


class TaskResultArrivedLate(LifecycleEvent):
    """After the task expired, the external service delivered a result after all.

    Not a second outcome: the task stays expired; users see the result marked late.
    """

    type: Literal["task.result_arrived_late"] = "task.result_arrived_late"
    result_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


TerminalEvent = TaskCompleted | TaskFailed | TaskExpired

AnyLifecycleEvent = (
    TaskDispatched
    | TaskProgressed
    | TaskCompleted
    | TaskFailed
    | TaskExpired
    | TaskResultArrivedLate
)
"""Any event on the task-lifecycle topic."""

TaskLifecycleEvent = Annotated[AnyLifecycleEvent, Field(discriminator="type")]
lifecycle_event_adapter: TypeAdapter[AnyLifecycleEvent] = TypeAdapter(TaskLifecycleEvent)


class CallbackReceived(Event):
    """The gateway accepted a callback for `correlation_id`. Keyed by `correlation_id`."""

    type: Literal["callback.received"] = "callback.received"
    correlation_id: str
    status: Literal["success", "error", "progress"]
    result_url: HttpUrlString | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    progress: Progress | None = None
    message: str | None = None
    delivery_id: str | None = Field(default=None, max_length=200)
    """The sender's `webhook-id` header, when it sent one."""


class DeadlineReached(Event):
    """The expirer saw a task's deadline pass. Keyed by `correlation_id`."""

    type: Literal["deadline.reached"] = "deadline.reached"
    correlation_id: str
    deadline_at: Instant


CommentKind = Literal["result", "error", "expired", "progress", "late_result"]


class ChatCommentPosted(Event):
    """The notifier wrote a chat comment on a task. Keyed by `correlation_id`."""

    type: Literal["chat_comment.posted"] = "chat_comment.posted"
    correlation_id: str
    task: TaskRef
    comment_id: int
    kind: CommentKind
    text: str
    edited: bool = False
    """A new text for a comment announced before (the same `comment_id`): a progress comment
    is kept up to date in place, so show this text instead of the earlier one, not beside it."""
    revision: int | None = Field(default=None, ge=1)
    """Orders the texts of one comment: 1 for its first text, greater for each later one (not
    always by one: a text superseded before it was sent is skipped). Show an edit only if its
    revision is greater than the last one shown for its `comment_id`; a smaller or equal one is
    a stale or repeated text arriving late. Absent (None) only on events written before the
    field existed, which carry no order."""


class UserNotified(Event):
    """The notifier told one user about a task's outcome. Keyed by `correlation_id`."""

    type: Literal["user.notified"] = "user.notified"
    correlation_id: str
    task: TaskRef
    user_id: str
    kind: CommentKind
    text: str


NotificationEvent = Annotated[ChatCommentPosted | UserNotified, Field(discriminator="type")]
notification_event_adapter: TypeAdapter[ChatCommentPosted | UserNotified] = TypeAdapter(
    NotificationEvent
)


class DeadLetter(BaseModel):
    """A message a consumer could not accept, with the reason and what is safe to keep of it.

    The whole original stays at `partition` and `offset` of `source_topic` while the topic
    retains it; `value_size` and `value_sha256` tell whether a fetched copy is that original.
    Fields after `value_base64` are absent from dead letters written before they existed.
    """

    model_config = ConfigDict(frozen=True)

    source_topic: str
    partition: int
    offset: int
    consumer: str
    reason: str
    key: str | None
    value_base64: str
    """The original bytes, or a prefix of them (`truncated`), secrets masked (`redacted`)."""
    value_size: int | None = None
    """The size in bytes of the original as received."""
    value_sha256: str | None = None
    """The SHA-256 (hex) of the original as received; none when it was `redacted`."""
    truncated: bool = False
    """`value_base64` holds only the first part of the (redacted) original."""
    redacted: bool = False
    """The original held secrets, or may have. JSON with webhookAuth or authorization keys has
    their values masked in `value_base64`, which is then the document re-serialised, not the
    bytes received. An original that is not JSON but names such a key or holds a bearer token
    is left out: `value_base64` is empty while `value_size` is not 0."""
    rejected_at: Instant = Field(default_factory=utc_now)
