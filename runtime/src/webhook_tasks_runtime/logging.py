"""Structured logs that always carry the correlation id of the work in hand."""

from __future__ import annotations

import atexit
import contextvars
import functools
import json
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}

THROTTLED_LOGGERS = ("aiokafka", "faststream")
"""Loggers (with their children) whose repeated messages are held back. While Kafka is away the
Kafka client logs the same failure about every 100 ms for each of its clients, and a worker has
several: some 75 lines a second that would bury every other line."""
REPEAT_WINDOW_SECONDS = 30.0
"""After a message of THROTTLED_LOGGERS is written, for how long its repeats are only counted."""
_MAX_TRACKED_MESSAGES = 1_000
"""Distinct messages counted at once; a message beyond them is written as it is. The Kafka
client's messages are a few dozen templates, so the bound only matters for a runaway logger."""


class correlation_context:  # noqa: N801 (used as a function: `with correlation_context(...)`)
    """Tag every log record written inside the block with `correlation_id`."""

    # A class, not @contextmanager: entered once per event and per callback, where the
    # generator behind that decorator took 1.1 µs a block, this takes 0.4 µs.
    __slots__ = ("_correlation_id", "_token")

    def __init__(self, correlation_id: str | None) -> None:
        self._correlation_id = correlation_id
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> None:
        self._token = _correlation_id.set(self._correlation_id)

    def __exit__(self, *_exc_info: object) -> None:
        if self._token is not None:
            _correlation_id.reset(self._token)
            self._token = None


class _CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = _correlation_id.get()
        return True


@dataclass(slots=True)
class _Repeats:
    """What was held back of one message since it was last written."""

    written_at: float
    count: int = 0
    last: logging.LogRecord | None = None
    last_at: float = 0.0


class RepeatedMessageFilter(logging.Filter):
    """Pass a throttled logger's message once per window; then say how often it repeated.

    A message is its logger, level, template (`msg`, before its arguments) and the types of
    the exceptions it carries, so a new kind of failure is always written at once. Repeats
    within the window are dropped, tracebacks and all, and counted; once the window is over,
    one record on the same logger and level gives the count and the last repeat's text, before
    whichever record comes next (of any logger) or at exit. Records of other loggers pass.
    """

    def __init__(
        self,
        write: Callable[[logging.LogRecord], None],
        *,
        loggers: Iterable[str] = THROTTLED_LOGGERS,
        window_seconds: float = REPEAT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._write = write
        names = tuple(loggers)
        self._names = frozenset(names)
        self._prefixes = tuple(f"{name}." for name in names)
        self._window = window_seconds
        self._clock = clock
        # Records come from the event loop and from threads (asyncio.to_thread, uvicorn).
        self._lock = threading.Lock()
        self._repeats: dict[Hashable, _Repeats] = {}
        self._next_window_end = math.inf
        """When the earliest window with repeats ends: checked on every record, so a count is
        reported even when its message stops (Kafka is back) and other records go on."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether to write `record`; write the counts of windows that are over first."""
        now = self._clock()
        if now >= self._next_window_end:
            self._write_summaries(self._pop_windows_over(now))
        name = record.name
        if name not in self._names and not name.startswith(self._prefixes):
            return True
        key = _message_key(record)
        if len(self._repeats) >= _MAX_TRACKED_MESSAGES and key not in self._repeats:
            self._write_summaries(self._pop_windows_over(now))  # make room: forget ended windows
        with self._lock:
            repeats = self._repeats.get(key)
            if repeats is not None and now < repeats.written_at + self._window:
                if repeats.count == 0:
                    self._next_window_end = min(
                        self._next_window_end, repeats.written_at + self._window
                    )
                repeats.count += 1
                repeats.last = record
                repeats.last_at = now
                return False
            if repeats is not None or len(self._repeats) < _MAX_TRACKED_MESSAGES:
                self._repeats[key] = _Repeats(written_at=now)  # this record opens a new window
        if repeats is not None and repeats.count:
            # Its window ended while another thread was counting in it.
            self._write_summaries([repeats])
        return True

    def flush(self) -> None:
        """Write the counts of every window that held repeats back, over or not."""
        self._write_summaries(self._pop_windows(lambda _repeats: True))

    def _pop_windows_over(self, now: float) -> list[_Repeats]:
        return self._pop_windows(lambda repeats: repeats.written_at + self._window <= now)

    def _pop_windows(self, chosen: Callable[[_Repeats], bool]) -> list[_Repeats]:
        with self._lock:
            ended = [key for key, repeats in self._repeats.items() if chosen(repeats)]
            popped = [self._repeats.pop(key) for key in ended]
            self._next_window_end = min(
                (r.written_at + self._window for r in self._repeats.values() if r.count),
                default=math.inf,
            )
        return popped

    def _write_summaries(self, windows: list[_Repeats]) -> None:
        # Outside the lock: writing may log, and a record logged meanwhile must not wait on it.
        for repeats in windows:
            if repeats.last is not None:
                self._write(_summary_of(repeats, repeats.last))


def _message_key(record: logging.LogRecord) -> Hashable:
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    raised = record.exc_info[0] if record.exc_info else None
    arguments = record.args if isinstance(record.args, tuple) else ()
    quoted = tuple(type(value) for value in arguments if isinstance(value, BaseException))
    return (record.name, record.levelno, template, raised, quoted)


def _summary_of(repeats: _Repeats, last: logging.LogRecord) -> logging.LogRecord:
    try:
        text = last.getMessage()
    except Exception:
        text = str(last.msg)  # its arguments do not fit: the handler reported that at the first
    if last.exc_info and last.exc_info[1] is not None:
        raised = traceback.format_exception_only(last.exc_info[1])[-1].strip()
        text = f"{text} [{raised}]"
    summary = logging.LogRecord(
        last.name,
        last.levelno,
        last.pathname,
        last.lineno,
        "repeated %d more times in %.1f s, not written: %s",
        (repeats.count, repeats.last_at - repeats.written_at, text),
        None,
    )
    summary.suppressed_repeats = repeats.count
    return summary


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        # json.dumps(entry, default=str) builds this encoder on every call.
        self._encode = json.JSONEncoder(default=str).encode

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if value is not None and key not in _STANDARD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry)


class ConsoleFormatter(logging.Formatter):
    """Format a record as one readable line, extra fields as key=value."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRIBUTES and value is not None
        )
        clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{clock} {record.levelname:<7} {self._service}: {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record of this process to stderr in the chosen format."""
    # No formatter here prints the caller's file and line, thread or process, so the records
    # need not look them up: a service that logs each request saves that on every line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter(service))
    # First: a repeat it drops needs no correlation id. Its counts skip the filters and go
    # straight to the stream, so they are neither throttled again nor tagged with the
    # correlation id of whatever record happens to come after the window.
    handler.addFilter(RepeatedMessageFilter(functools.partial(_write_unfiltered, handler)))
    handler.addFilter(_CorrelationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream gives its logger, on import, a coloured handler of its own and stops it
    # propagating: its lines (a batch that failed, a commit refused) bypassed the format,
    # the correlation ids and the throttle. The brokers log through that logger.
    import faststream  # noqa: F401 (imported for that logger, before it is adopted)

    adopted = logging.getLogger("faststream")
    adopted.handlers.clear()
    adopted.propagate = True
    # The Kafka client and FastStream log every fetch and rebalance at INFO.
    for noisy in ("aiokafka", "faststream", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _write_unfiltered(handler: logging.Handler, record: logging.LogRecord) -> None:
    handler.acquire()
    try:
        handler.emit(record)
    finally:
        handler.release()


@atexit.register
def _write_held_back_counts() -> None:
    # Registered after logging's own shutdown, so it runs before it, while the stream is open:
    # a stop during an outage would otherwise lose the count of its last window.
    for handler in logging.getLogger().handlers:
        for each in handler.filters:
            if isinstance(each, RepeatedMessageFilter):
                each.flush()
