"""The `webhook-tasks` command: run the stack or one service, submit tasks, call back, inspect."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import uuid
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from webhook_tasks_contracts import TaskMetadata, TaskRequested
from webhook_tasks_runtime.embedded import EmbeddedInfrastructureError
from webhook_tasks_runtime.entry import describe_validation_error

from .config import (
    SCHEMA_ENV_VARS,
    ConfigurationError,
    database_url,
    gateway_config,
    kafka_config,
    service_schemas,
)
from .operations import (
    OperationError,
    inspect_tasks,
    is_utf8,
    publish_task,
    send_callback,
    url_problem,
)
from .render import render_reports
from .stack import StackError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Long-running external tasks behind a chat assistant: dispatch, call back, comment.",
)
# No emoji codes: text from outside (":fire:" in a task id) is printed as it is.
console = Console(highlight=False, soft_wrap=True, emoji=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

AUTH_ENV_VAR = "WEBHOOK_AUTH"


def _utf8(value: Any) -> Any:
    """Refuse text given as bytes that are not UTF-8; return the value as given."""
    texts = value if isinstance(value, list) else [value]
    if any(isinstance(text, str) and not is_utf8(text) for text in texts):
        # Such text can be neither sent nor looked up: refused here, it is not silently lost.
        raise typer.BadParameter("is not UTF-8 text")
    return value


def _postable_url(value: str | None) -> str | None:
    """Refuse a URL no callback can be posted to; return it as given."""
    problem = url_problem(value) if value is not None else None
    if problem:
        raise typer.BadParameter(problem)
    return value


DispatcherSchema = Annotated[
    str | None,
    typer.Option(
        callback=_utf8,
        envvar=SCHEMA_ENV_VARS["dispatcher"],
        help="The dispatcher's DATABASE_SCHEMA, where it is not the default.",
    ),
]
ExpirerSchema = Annotated[
    str | None,
    typer.Option(
        callback=_utf8,
        envvar=SCHEMA_ENV_VARS["expirer"],
        help="The expirer's DATABASE_SCHEMA, where it is not the default.",
    ),
]
NotifierSchema = Annotated[
    str | None,
    typer.Option(
        callback=_utf8,
        envvar=SCHEMA_ENV_VARS["notifier"],
        help="The notifier's DATABASE_SCHEMA, where it is not the default.",
    ),
]


class TaskMode(StrEnum):
    """How the external service reports the result."""

    callback = "callback"
    sync = "sync"


class CallbackStatus(StrEnum):
    """What the external service reports."""

    success = "success"
    error = "error"
    progress = "progress"


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Start a demo external service and submit one task.")
    ] = False,
    gateway_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the callback gateway.")
    ] = 8080,
) -> None:
    """Start PostgreSQL, Kafka and the four services; print each step until Ctrl-C."""
    from .up import run_up

    _quiet_kafka_client_logs()
    run_up(demo=demo, gateway_port=gateway_port, console=console)


@app.command()
def dispatcher() -> None:
    """Run the dispatcher service (as a Kubernetes pod would)."""
    from webhook_tasks_dispatcher.main import run

    run()


@app.command("callback-gateway")
def callback_gateway() -> None:
    """Run the callback gateway service."""
    from webhook_tasks_gateway.main import run

    run()


@app.command()
def expirer() -> None:
    """Run the expirer service."""
    from webhook_tasks_expirer.main import run

    run()


@app.command()
def notifier() -> None:
    """Run the notifier service."""
    from webhook_tasks_notifier.main import run

    run()


@app.command("demo-service")
def demo_service(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8090,
    host: Annotated[
        str, typer.Option(callback=_utf8, help="Interface to listen on.")
    ] = "127.0.0.1",
    delay: Annotated[float, typer.Option(min=0, help="Default seconds before calling back.")] = 2.0,
) -> None:
    """Run the demo external service (a pretend video generator)."""
    import uvicorn

    from .demo import create_demo_app

    public_url = f"http://{host}:{port}"
    uvicorn.run(
        create_demo_app(public_url=public_url, default_delay=delay),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # A held sync request (outcome never) must not hold up a stop.
        timeout_graceful_shutdown=2,
    )


@app.command()
def submit(
    webhook_url: Annotated[
        str, typer.Option(callback=_utf8, help="The external service's endpoint.")
    ],
    prompt: Annotated[str, typer.Option(callback=_utf8, help="The user's prompt.")],
    auth: Annotated[
        str | None,
        typer.Option(
            callback=_utf8,
            envvar=AUTH_ENV_VAR,
            help=(
                f"Authorization header value for the service. Better given as {AUTH_ENV_VAR}: "
                "an option's value shows in `ps` and in shell history."
            ),
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(callback=_utf8, help="KEY=VALUE merged into the request body."),
    ] = None,
    timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to wait for the callback (sync: for the answer).")
    ] = 300,
    mode: Annotated[
        TaskMode,
        typer.Option(help="callback: the service calls back; sync: its answer is the result."),
    ] = TaskMode.callback,
    task_id: Annotated[
        str | None, typer.Option(callback=_utf8, help="Task id (default: a new one).")
    ] = None,
    user_id: Annotated[str, typer.Option(callback=_utf8, help="The task's user.")] = "cli-user",
    project_id: Annotated[
        str, typer.Option(callback=_utf8, help="The task's project.")
    ] = "cli-project",
    follower: Annotated[
        list[str] | None, typer.Option(callback=_utf8, help="Another user to notify.")
    ] = None,
) -> None:
    """Publish a task event as an upstream system would; print the task id."""
    try:
        request = TaskRequested(
            task_id=task_id or f"task-{uuid.uuid4().hex[:12]}",
            user_id=user_id,
            project_id=project_id,
            prompt=prompt,
            followers=follower or [],
            task_metadata=TaskMetadata(
                is_webhook_task=True,
                webhook_url=webhook_url,
                webhook_auth=auth,
                webhook_params=_pairs(param, option="--param"),
                timeout_seconds=timeout,
                mode=mode.value,
            ),
        )
    except ValidationError as error:
        # Every field comes from an option: a value the contract refuses is a usage error.
        raise typer.BadParameter(_describe_validation(error)) from None
    config = kafka_config()
    _quiet_kafka_client_logs()
    asyncio.run(publish_task(config, request))
    # The exact id, whatever it holds: scripts capture it.
    console.print(request.task_id, markup=False)


_OPTIONS_OF_STATUS = {
    "success": {"--result-url", "--metadata"},
    "error": {"--error"},
    "progress": {"--progress", "--message"},
}
"""The options each callback status carries; the contract drops any other without a word."""


@app.command()
def callback(
    correlation_id: Annotated[
        str, typer.Argument(callback=_utf8, help="The task's correlation id.")
    ],
    status: Annotated[CallbackStatus, typer.Argument(help="success, error or progress.")],
    result_url: Annotated[
        str | None, typer.Option(callback=_utf8, help="Link to the result (success).")
    ] = None,
    error: Annotated[str | None, typer.Option(callback=_utf8, help="Reason (error).")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(callback=_utf8, help="KEY=VALUE about the result.")
    ] = None,
    progress: Annotated[
        float | None, typer.Option(min=0, max=100, help="Percent done (progress).")
    ] = None,
    message: Annotated[str | None, typer.Option(callback=_utf8, help="Progress message.")] = None,
    callback_url: Annotated[
        str | None,
        typer.Option(callback=_postable_url, help="Post here instead of minting a URL."),
    ] = None,
    dispatcher_schema: DispatcherSchema = None,
) -> None:
    """Call the gateway back as the external service would."""
    given = {
        "--result-url": result_url is not None,
        "--error": error is not None,
        "--metadata": bool(metadata),
        "--progress": progress is not None,
        "--message": message is not None,
    }
    allowed = _OPTIONS_OF_STATUS[status.value]
    misplaced = [option for option, is_given in given.items() if is_given and option not in allowed]
    if misplaced:
        raise typer.BadParameter(
            f"cannot go with status {status.value}; it takes {' and '.join(sorted(allowed))}",
            param_hint=", ".join(f"'{option}'" for option in misplaced),
        )
    body: dict[str, object] = {"correlationId": correlation_id, "status": status.value}
    if status is CallbackStatus.success:
        if result_url:
            body["resultUrl"] = result_url
        body["metadata"] = _pairs(metadata, option="--metadata")
    elif status is CallbackStatus.error:
        body["error"] = error or "The external service reported an error."
    else:
        if progress is not None:
            body["progress"] = progress
        if message:
            body["message"] = message
    config = None if callback_url else gateway_config()
    schemas = service_schemas(dispatcher=dispatcher_schema)
    answer = asyncio.run(
        send_callback(config, correlation_id, body, callback_url=callback_url, schemas=schemas)
    )
    if not answer.accepted:
        raise OperationError(f"gateway answered {answer.status_code}: {answer.explanation}")
    console.print(f"{answer.status_code} accepted")


@app.command()
def show(
    task_or_correlation_id: Annotated[
        str, typer.Argument(callback=_utf8, help="A task id or a correlation id.")
    ],
    dispatcher_schema: DispatcherSchema = None,
    expirer_schema: ExpirerSchema = None,
    notifier_schema: NotifierSchema = None,
) -> None:
    """Print state, timestamps, attempts and chat comments of a task."""
    url = database_url()
    schemas = service_schemas(
        dispatcher=dispatcher_schema, expirer=expirer_schema, notifier=notifier_schema
    )
    reports = asyncio.run(inspect_tasks(url, task_or_correlation_id, schemas))
    if not reports:
        raise OperationError(f"no task with id or correlation id {task_or_correlation_id!r}")
    render_reports(console, reports)


_OPTION_OF_FIELD = {
    "webhook_url": "--webhook-url",
    "webhook_auth": "--auth",
    "webhook_params": "--param",
    "timeout_seconds": "--timeout",
    "task_id": "--task-id",
    "user_id": "--user-id",
    "project_id": "--project-id",
    "followers": "--follower",
    "prompt": "--prompt",
}


def _describe_validation(error: ValidationError) -> str:
    return describe_validation_error(error, lambda field: _OPTION_OF_FIELD.get(field, field))


def _pairs(pairs: list[str] | None, *, option: str) -> dict[str, Any]:
    """Turn KEY=VALUE arguments into a dict; a VALUE that is valid JSON keeps its type."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expects KEY=VALUE, got {pair!r}", param_hint=f"'{option}'")
        try:
            result[key.strip()] = json.loads(
                value, parse_constant=_not_a_json_number, parse_float=_finite_float
            )
        except _NonFiniteNumberError:
            # Python's json reads NaN and Infinity, which the wire's JSON cannot carry.
            raise typer.BadParameter(
                f"{key.strip()}: JSON has no NaN or Infinity", param_hint=f"'{option}'"
            ) from None
        except ValueError:
            result[key.strip()] = value
    return result


class _NonFiniteNumberError(ValueError):
    """A VALUE holds NaN or an infinity."""


def _not_a_json_number(constant: str) -> Any:
    raise _NonFiniteNumberError(constant)


def _finite_float(text: str) -> float:
    # A number too large for a float (1e999) reads as infinity.
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumberError(text)
    return value


def _quiet_kafka_client_logs() -> None:
    # aiokafka logs its own line for a broker it cannot reach; our one-line error says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def main() -> None:
    """Run the command line; errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except (OperationError, ConfigurationError, EmbeddedInfrastructureError, StackError) as error:
        errors.print(f"error: {error}", markup=False)
        sys.exit(1)
    except ValidationError as error:
        errors.print(f"error: invalid settings: {describe_validation_error(error)}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
