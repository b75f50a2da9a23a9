"""Render lifecycle events as Markdown chat comments: pure functions, no I/O.

Everything that comes from outside (metadata, error reasons, progress messages,
URLs) is untrusted: it is flattened to one line, stripped of secrets, truncated
and escaped, so it shows as literal text and can neither add links, images or
HTML nor change the comment's layout. Only the operator's templates are Markdown.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from webhook_tasks_contracts import (
    CALLBACK_PATH_PREFIX,
    CommentKind,
    FailureCause,
    LifecycleEvent,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskResultArrivedLate,
)

from .comment_templates import CommentTemplates

DEFAULT_TITLE = "Result ready"
MAX_TITLE_LENGTH = 200
MAX_REASON_LENGTH = 500
MAX_MESSAGE_LENGTH = 500
MAX_LABEL_LENGTH = 60
MAX_VALUE_LENGTH = 200
MAX_DETAILS = 20
ELLIPSIS = "…"
REDACTED = "[redacted]"

CAUSES: Mapping[FailureCause, str] = {
    "callback_error": "The external service reported an error",
    # Also the cause of a URL the dispatcher's guard refused, which no service ever saw:
    # the reason that follows says who refused.
    "dispatch_rejected": "The request to the external service was refused",
    # The reason that follows says whether it could not be reached or did not answer in time.
    "dispatch_unreachable": "The request to the external service got no answer",
}

# Characters that start inline Markdown anywhere in a line; `<`, `>` and `&` become
# HTML entities instead, which also defeats raw HTML and autolinks.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# Block syntax only counts at the start of a line, where a value may land in a template.
_BLOCK_START = re.compile(r"^(?:([#+=-])|(\d{1,9})([.)]))")
# Bearer tokens of any length; Basic only when it looks like base64, as "basic" is a word.
_BEARER = re.compile(
    r"\b(bearer)\s+[A-Za-z0-9._~+/=-]+|\b(basic)\s+[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE
)
# `token=x`, `api key: x` and JSON's `"authorization": "x"` (a quote before the colon); an
# API or access key also when only a space comes before it ("invalid api key sk_...").
_SECRET_ASSIGNMENT = re.compile(
    r"\b(password|passwd|secret|token|api[_ -]?key|access[_ -]?key|authorization)"
    r"([\"']?\s*[=:]\s*|(?<=key)\s+)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
    re.IGNORECASE,
)
# An Authorization header's value may name its scheme first ("Token abc", "Digest ..."): the
# word after the scheme goes too.
_AUTHORIZATION = re.compile(
    r"\b(authorization[\"']?\s*[=:]\s*)([A-Za-z][A-Za-z0-9-]*\s+[^\s,;&\"']+)", re.IGNORECASE
)
# Shapes of well-known credentials, wherever they appear: provider API keys (sk-..., sk_live_...),
# GitHub and Slack tokens, AWS access key ids, JWTs.
_KNOWN_TOKEN = re.compile(
    r"\b(?:[sprk]k[-_](?:live|test|proj)?[-_]?[A-Za-z0-9]{12,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
)
# A callback URL's token lets anyone who reads it decide the task's outcome.
_CALLBACK_TOKEN = re.compile(re.escape(CALLBACK_PATH_PREFIX) + r"/([^/\s?#]+)/[^\s/?#\"'<>]+")
_BARE_TOKEN = re.compile(r"\b[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,64})?\.[A-Za-z0-9_-]{43}\b")
# What a chat's Markdown would turn into a link by itself (GitHub's autolink extension).
# A scheme starts where no scheme character comes before it: matched from every word boundary
# instead, "v1.2-v1.2-..." took time growing with the square of its length (50 s at 200 KiB).
_SCHEME_START = r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://"
_AUTOLINK = re.compile(rf"(?:{_SCHEME_START}|\bwww\.)[^\s<>`()\[\]]+", re.IGNORECASE)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Unicode's control characters (category Cc): C0, DEL and C1."""
_SCAN_MARGIN = 8192
_URL_TRAILER = ".,:;!?*_~'\""
_URL_CREDENTIALS = re.compile(rf"({_SCHEME_START})[^/\s@]+@", re.IGNORECASE)
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "apikey", "auth", "authorization"}
    | {"credential", "signature", "cookie", "passphrase", "pin"}
    | {"passwords", "secrets", "tokens", "apikeys", "credentials", "signatures", "cookies"}
)
# Words that make a key a measure or a state of a secret rather than the secret itself.
_ABOUT_A_SECRET = frozenset(
    {"count", "counts", "usage", "used", "limit", "length", "status", "valid", "verified"}
    | {"type", "expires", "expiry", "expired", "ttl", "scheme", "algorithm"}
)
_SECRET_PHRASES = ("api key", "private key", "access key", "client secret")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Bidi embeddings, overrides and isolates reorder what follows them ("invoice\u202egnp.exe"
# shows as "invoiceexe.png"); zero-width spaces and joiners hide inside words. Joiners that
# scripts and emoji need (U+200C, U+200D) and the directional marks stay.
_INVISIBLE = re.compile("[\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff]")
# A URL survives untouched except for what could end a Markdown link destination early.
_URL_SAFE = ":/?#[]@!$&'*+,;=%~-._"


@dataclass(frozen=True, slots=True)
class RenderedComment:
    """The text of one comment and what kind of comment it is."""

    kind: CommentKind
    text: str


def render_comment(
    event: TaskCompleted | TaskFailed | TaskExpired | TaskProgressed | TaskResultArrivedLate,
    templates: CommentTemplates,
) -> RenderedComment:
    """Render the comment that tells a task's users about `event`."""
    match event:
        case TaskCompleted():
            kind: CommentKind = "result"
            values = _result_values(event)
        case TaskResultArrivedLate():
            kind = "late_result"
            values = _result_values(event)
        case TaskFailed():
            kind = "error"
            values = {
                "cause": CAUSES[event.cause],
                "reason": escape_markdown(_clean(event.reason, MAX_REASON_LENGTH))
                or "No reason was given.",
            }
        case TaskExpired():
            kind = "expired"
            values = {"timeout": humanise_seconds(event.timeout_seconds)}
        case TaskProgressed():
            kind = "progress"
            values = {
                "progress": "" if event.progress is None else percent(event.progress),
                "message": escape_markdown(_clean(event.message or "", MAX_MESSAGE_LENGTH)),
            }
    values |= _common_values(event)
    return RenderedComment(kind, _tidy(templates[kind].substitute(values)))


ENDED: Mapping[type[LifecycleEvent], str] = {
    TaskCompleted: "completed",
    TaskFailed: "failed",
    TaskExpired: "expired",
}
"""How the last text of a progress comment says the task ended ("the task completed")."""


def render_progress_ended(
    event: TaskCompleted | TaskFailed | TaskExpired, templates: CommentTemplates
) -> str:
    """Render the text a task's progress comment keeps once `event` ended the task."""
    values = {"outcome": ENDED[type(event)]} | _common_values(event)
    return _tidy(templates["progress_ended"].substitute(values))


def _common_values(event: LifecycleEvent) -> dict[str, str]:
    return {
        "task_id": escape_markdown(_clean(event.task.task_id, MAX_VALUE_LENGTH)),
        "correlation_id": escape_markdown(_clean(event.correlation_id, MAX_VALUE_LENGTH)),
    }


def percent(progress: float) -> str:
    """Return `progress` (0-100) as `42%` or `42.5%`, rounded down: never 100% before the end."""
    tenths = math.floor(progress * 10)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def _result_values(event: TaskCompleted | TaskResultArrivedLate) -> dict[str, str]:
    raw_title = event.metadata.get("title")
    # A number is a title too (an episode, a year); anything else stays among the details.
    titled = isinstance(raw_title, str | int | float) and not isinstance(raw_title, bool)
    title = _clean(_as_text(raw_title), MAX_TITLE_LENGTH) if titled else ""
    details = {
        key: value for key, value in event.metadata.items() if not (key == "title" and titled)
    }
    url = safe_link_target(event.result_url) if event.result_url else None
    if url is not None:
        link = f"[Open the result]({url})"
    elif event.result_url:
        # Not http(s): show where the result is, but never as something to click.
        link = f"Result: {escape_markdown(_clean(event.result_url, MAX_VALUE_LENGTH))}"
    else:
        link = ""
    return {
        "title": escape_markdown(title or DEFAULT_TITLE),
        "link": link,
        "result_url": url or "",
        "details": details_list(details),
    }


def details_list(metadata: Mapping[str, Any]) -> str:
    """Return metadata as a Markdown list, `- File size: 125 MB`, secrets and blanks left out."""
    lines = []
    shown = 0
    for key, value in metadata.items():
        label = humanise_key(key)
        if _looks_secret(label) or value is None or value == "":
            continue
        if shown == MAX_DETAILS:
            lines.append(f"- {ELLIPSIS}")
            break
        text = _clean(_as_text(value), MAX_VALUE_LENGTH)
        lines.append(
            f"- {escape_markdown(_truncate(label, MAX_LABEL_LENGTH))}: {escape_markdown(text)}"
        )
        shown += 1
    return "\n".join(lines)


def humanise_key(key: str) -> str:
    """Turn `fileSize`, `file_size` or `file-size` into `File size`; acronyms stay upper case."""
    words = _CAMEL_BOUNDARY.sub(" ", key).replace("_", " ").replace("-", " ").split()
    if not words:
        return key.strip()
    words = [word if len(word) > 1 and word.isupper() else word.lower() for word in words]
    first = words[0]
    return " ".join([first[:1].upper() + first[1:], *words[1:]])


def humanise_seconds(seconds: int) -> str:
    """Turn 300 into `5 minutes` and 5400 into `1 hour 30 minutes` (the two largest units)."""
    parts = []
    remaining = max(seconds, 0)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {unit}" + ("" if count == 1 else "s"))
    return " ".join(parts[:2]) or "0 seconds"


def escape_markdown(text: str) -> str:
    """Return `text` so that a Markdown renderer shows it literally, on one line."""
    # A URL in the text becomes code: renderers autolink bare URLs, but never inside code.
    parts = []
    shown = 0
    for match in _AUTOLINK.finditer(text):
        # As renderers do, punctuation ending a sentence is not part of the URL.
        url = match.group().rstrip(_URL_TRAILER)
        parts.append(_escape_inline(text[shown : match.start()]))
        parts.append(f"`{url}`")
        shown = match.start() + len(url)
    parts.append(_escape_inline(text[shown:]))
    return _BLOCK_START.sub(_escape_block_start, "".join(parts))


def _escape_inline(text: str) -> str:
    return _INLINE_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _escape_block_start(match: re.Match[str]) -> str:
    marker, number, delimiter = match.groups()
    return f"\\{marker}" if marker else f"{number}\\{delimiter}"


def safe_link_target(url: str) -> str | None:
    """Return `url` fit for a Markdown link, or None unless it is an absolute http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        return None
    # Credentials in the URL would be shown to every reader of the chat.
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, parts.fragment))
    return quote(clean, safe=_URL_SAFE)


def redact_secrets(text: str) -> str:
    """Replace credentials an external service may echo back (`Bearer ...`, `token=...`)."""
    text = _CALLBACK_TOKEN.sub(
        lambda match: f"{CALLBACK_PATH_PREFIX}/{match.group(1)}/{REDACTED}", text
    )
    text = _BARE_TOKEN.sub(REDACTED, text)
    text = _BEARER.sub(lambda match: f"{match.group(1) or match.group(2)} {REDACTED}", text)
    text = _AUTHORIZATION.sub(lambda match: f"{match.group(1)}{REDACTED}", text)
    text = _SECRET_ASSIGNMENT.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)
    text = _KNOWN_TOKEN.sub(REDACTED, text)
    return _URL_CREDENTIALS.sub(lambda match: f"{match.group(1)}{REDACTED}@", text)


def _clean(text: str, limit: int) -> str:
    # Only what may be shown is searched for secrets: a megabyte of metadata took the masking
    # seconds per value. The margin keeps whole any credential that starts within the limit.
    return _truncate(redact_secrets(_one_line(text)[: limit + _SCAN_MARGIN]), limit)


def _one_line(text: str) -> str:
    return " ".join(_INVISIBLE.sub("", _CONTROL.sub(" ", text)).split())


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # Every digit the service sent (52.520008 stays so, not 52.52); whole numbers as such.
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(_without_secrets(value), ensure_ascii=False, default=str)


def _without_secrets(value: Any) -> Any:
    # Nested as deep as it goes: an echoed request's headers may hold its Authorization.
    if isinstance(value, dict):
        return {
            key: REDACTED if _looks_secret(humanise_key(str(key))) else _without_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    return value


def _looks_secret(label: str) -> bool:
    lowered = label.lower()
    words = lowered.split()
    if _ABOUT_A_SECRET.intersection(words):
        return False  # "Token count", "Signature status": facts about one, not one
    return bool(_SECRET_WORDS.intersection(words)) or any(
        phrase in lowered for phrase in _SECRET_PHRASES
    )


def _tidy(text: str) -> str:
    # An empty placeholder (no link, no details) must not leave a gap of blank lines.
    lines = [line.rstrip() for line in text.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip()
