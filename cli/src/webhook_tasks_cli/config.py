"""Where the CLI finds the system: environment variables first, else the running `up` stack."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webhook_tasks_runtime.settings import DatabaseSettings

STACK_FILE_ENV = "WEBHOOK_TASKS_STACK_FILE"
SCHEMA_ENV_VARS = {
    "dispatcher": "DISPATCHER_DATABASE_SCHEMA",
    "expirer": "EXPIRER_DATABASE_SCHEMA",
    "notifier": "NOTIFIER_DATABASE_SCHEMA",
}
"""Each service reads its schema from DATABASE_SCHEMA in its own environment; the CLI reads
all three services' tables, so it takes each one under the service's name."""


class ConfigurationError(RuntimeError):
    """The CLI cannot tell where the system is."""


@dataclass(frozen=True)
class StackConfig:
    """Addresses and keys of one running system."""

    kafka_bootstrap_servers: str
    database_url: str | None = None
    gateway_url: str | None = None
    callback_token_keys: str | None = None
    topic_prefix: str = "webhook-tasks"
    kafka_enable_idempotence: bool = True
    pid: int | None = None
    kafka_security: dict[str, str] = field(default_factory=dict)
    """How Kafka is reached: KAFKA_SECURITY_PROTOCOL and the KAFKA_SSL_* and KAFKA_SASL_*
    settings, by field name, as given (none: in plain text, as the embedded broker takes
    clients). A stack records them, so a command in another shell connects as `up` did."""


@dataclass(frozen=True)
class ServiceSchemas:
    """The PostgreSQL schema each service that owns tables keeps them in."""

    dispatcher: str
    expirer: str
    notifier: str


def service_schemas(
    *, dispatcher: str | None = None, expirer: str | None = None, notifier: str | None = None
) -> ServiceSchemas:
    """Return each service's schema: as given, else the default that service itself uses."""
    # Imported here: only `show` and `callback` need them, and every command loads this module.
    from webhook_tasks_dispatcher.settings import DispatcherSettings
    from webhook_tasks_expirer.settings import ExpirerSettings
    from webhook_tasks_notifier.settings import NotifierSettings

    return ServiceSchemas(
        dispatcher=dispatcher or _default_schema(DispatcherSettings),
        expirer=expirer or _default_schema(ExpirerSettings),
        notifier=notifier or _default_schema(NotifierSettings),
    )


def _default_schema(settings: type[DatabaseSettings]) -> str:
    return str(settings.model_fields["database_schema"].default)


def env_flag(name: str, *, default: bool) -> bool:
    """Read a yes/no environment variable; unset or blank gives `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


def stack_file() -> Path:
    """Return the file where a running `webhook-tasks up` describes itself."""
    override = os.environ.get(STACK_FILE_ENV)
    if override:
        return Path(override)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "webhook-tasks" / "stack.json"


def write_stack_file(config: StackConfig) -> Path:
    """Describe the running stack for other CLI commands; readable by this user only."""
    path = stack_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.touch(mode=0o600)
    temporary.write_text(json.dumps(asdict(config)))
    temporary.replace(path)
    return path


def remove_stack_file(pid: int) -> None:
    """Delete the stack file if it still describes the stack of process `pid`."""
    path = stack_file()
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


@dataclass(frozen=True)
class GatewayConfig:
    """What `callback` needs to mint a callback URL, and where to check the correlation id."""

    gateway_url: str | None
    callback_token_keys: str | None
    database_url: str | None


# Each command reads only the settings it uses: one set for another purpose (DATABASE_URL
# for `show`) must neither be ignored nor make another command ask for what it never uses.
def kafka_config() -> StackConfig:
    """Return where to publish: KAFKA_BOOTSTRAP_SERVERS and its settings, else the stack's."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        return StackConfig(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=os.environ.get("TOPIC_PREFIX", "webhook-tasks"),
            kafka_enable_idempotence=env_flag("KAFKA_ENABLE_IDEMPOTENCE", default=True),
            kafka_security=kafka_security_from_env(),
        )
    return _require_stack(
        "KAFKA_BOOTSTRAP_SERVERS (and TOPIC_PREFIX, KAFKA_SECURITY_PROTOCOL as needed)"
    )


def database_url() -> str:
    """Return the database the services keep their tables in: DATABASE_URL, else the stack's."""
    url = os.environ.get("DATABASE_URL") or _require_stack("DATABASE_URL").database_url
    if not url:
        raise ConfigurationError("the running stack names no database: set DATABASE_URL")
    return url


def gateway_config() -> GatewayConfig:
    """Return how to call back: PUBLIC_CALLBACK_BASE_URL and CALLBACK_TOKEN_KEYS, else the stack."""
    gateway_url = os.environ.get("PUBLIC_CALLBACK_BASE_URL") or os.environ.get("GATEWAY_URL")
    keys = os.environ.get("CALLBACK_TOKEN_KEYS")
    if gateway_url or keys:
        # Another deployment's gateway: its database only if named, never a local stack's.
        return GatewayConfig(gateway_url, keys, os.environ.get("DATABASE_URL"))
    stack = _require_stack("PUBLIC_CALLBACK_BASE_URL and CALLBACK_TOKEN_KEYS (and DATABASE_URL)")
    return GatewayConfig(
        stack.gateway_url,
        stack.callback_token_keys,
        os.environ.get("DATABASE_URL") or stack.database_url,
    )


def _require_stack(settings: str) -> StackConfig:
    stack = _read_stack()
    if isinstance(stack, str):
        why = f" ({stack})" if stack else ""
        raise ConfigurationError(
            f"no running stack found{why}: start one with `webhook-tasks up`, or set {settings}"
        )
    return stack


def kafka_security_from_env() -> dict[str, str]:
    """Return the Kafka security settings the environment gives, by field name, as given."""
    from webhook_tasks_runtime.kafka_security import KafkaSecuritySettings

    # The same names, and the same case-insensitive match, as the services' settings use.
    environment = {name.lower(): value for name, value in os.environ.items()}
    return {
        name: environment[name]
        for name in KafkaSecuritySettings.model_fields
        if name in environment
    }


def kafka_client_options(security: dict[str, str]) -> dict[str, Any]:
    """Return the options of the CLI's Kafka clients for the `security` settings."""
    if not security:
        return {}
    # Imported here: only the commands that reach Kafka need them.
    from pydantic import ValidationError
    from webhook_tasks_runtime.entry import describe_validation_error
    from webhook_tasks_runtime.kafka_security import KafkaSecurityError, KafkaSecuritySettings

    try:
        # Validated as given: the settings of a stack, not of the shell that reads them.
        return KafkaSecuritySettings.model_validate(security).kafka_client_options()
    except ValidationError as error:
        raise ConfigurationError(describe_validation_error(error)) from None
    except KafkaSecurityError as error:
        raise ConfigurationError(str(error)) from None


def running_stack() -> StackConfig | None:
    """Return the stack a running `webhook-tasks up` describes, if one does."""
    stack = _read_stack()
    return None if isinstance(stack, str) else stack


MAX_PID = 2**31 - 1
"""The largest process id any system gives (a pid_t); beyond it, os.kill overflows."""
PROC = Path("/proc")
"""Where Linux tells each process's command line; elsewhere, or unmounted, it is missing."""


def _read_stack() -> StackConfig | str:
    """Return the running stack the stack file describes, else why there is none."""
    path = stack_file()
    try:
        data = json.loads(path.read_text())
        config = StackConfig(**data)
    except (OSError, ValueError, TypeError):
        return ""
    pid = config.pid
    if pid is None:
        return config
    # Written by `up` as its own pid; anything else would signal a process group or overflow.
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
        return f"{path} names no process"
    if not _alive(pid):
        return ""
    if not _runs_webhook_tasks(pid):
        # The pid of an `up` that ended without tidying up (a reboot), reused by another program.
        return f"process {pid} of {path} is not webhook-tasks"
    return config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_webhook_tasks(pid: int) -> bool:
    """Return whether process `pid` runs webhook-tasks, as far as can be told cheaply."""
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        # No /proc to ask (not Linux, or not mounted): the pid is all there is to go by.
        return True
    # `up` runs as `python .../webhook-tasks up` or `python -m webhook_tasks_cli up`.
    words = command.decode(errors="replace").lower()
    return any(word in words for word in ("webhook-tasks", "webhook_tasks", "python", "pypy"))
