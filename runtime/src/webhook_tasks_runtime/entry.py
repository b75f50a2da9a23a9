"""The entry point of a service run as a program: a bad setting is one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pydantic import ValidationError

from .kafka_security import KafkaSecurityError


def describe_validation_error(
    error: ValidationError, name_of: Callable[[str], str] = str.upper
) -> str:
    """Return what is wrong, a field at a time (named by `name_of`), quoting no value."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        name = name_of(str(item["loc"][0])) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


def run_program(run: Callable[[], None]) -> None:
    """Call a service's `run`; invalid settings print one line on stderr and exit 1."""
    try:
        run()
    except ValidationError as error:
        print(f"error: invalid settings: {describe_validation_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KafkaSecurityError as error:
        print(f"error: invalid settings: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
