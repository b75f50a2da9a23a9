"""The Markdown templates comments are rendered from: packaged defaults, overridable by file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

from webhook_tasks_contracts import CommentKind

TemplateName = CommentKind | Literal["progress_ended"]
"""A comment kind, or `progress_ended`: the progress comment's last text, once the task ended."""

COMMON_PLACEHOLDERS = frozenset({"task_id", "correlation_id"})
PLACEHOLDERS: Mapping[TemplateName, frozenset[str]] = {
    "result": COMMON_PLACEHOLDERS | {"title", "link", "result_url", "details"},
    "error": COMMON_PLACEHOLDERS | {"cause", "reason"},
    "expired": COMMON_PLACEHOLDERS | {"timeout"},
    "progress": COMMON_PLACEHOLDERS | {"progress", "message"},
    "progress_ended": COMMON_PLACEHOLDERS | {"outcome"},
    "late_result": COMMON_PLACEHOLDERS | {"title", "link", "result_url", "details"},
}
"""What each template may use; every value is escaped before it is substituted."""


class TemplateError(ValueError):
    """A comment template cannot be used."""


@dataclass(frozen=True, slots=True)
class CommentTemplates:
    """One `string.Template` per comment kind, and one for a progress comment that ended."""

    by_kind: Mapping[TemplateName, Template]

    def __getitem__(self, kind: TemplateName) -> Template:
        return self.by_kind[kind]


def load_templates(override_dir: Path | None = None) -> CommentTemplates:
    """Read the packaged templates, each replaced by its file in `override_dir` when present."""
    if override_dir is not None:
        _refuse_unknown_files(override_dir)
    packaged = resources.files(__package__ or "webhook_tasks_notifier").joinpath("templates")
    by_kind: dict[TemplateName, Template] = {}
    for kind, allowed in PLACEHOLDERS.items():
        name = f"{kind}.md"
        override = override_dir / name if override_dir is not None else None
        if override is not None and override.is_file():
            source, text = str(override), override.read_text(encoding="utf-8")
        else:
            source, text = f"packaged {name}", packaged.joinpath(name).read_text(encoding="utf-8")
        # A placeholder that cannot be filled fails start-up, not the first comment.
        by_kind[kind] = _checked(Template(text), allowed, source)
    return CommentTemplates(by_kind)


def _checked(template: Template, allowed: frozenset[str], source: str) -> Template:
    if not template.is_valid():
        raise TemplateError(f"{source}: a '$' starts no placeholder (write '$$' for a dollar sign)")
    unknown = sorted(set(template.get_identifiers()) - allowed)
    if unknown:
        raise TemplateError(
            f"{source}: unknown placeholders {', '.join(unknown)}; use {', '.join(sorted(allowed))}"
        )
    return template


def _refuse_unknown_files(override_dir: Path) -> None:
    # A misspelt file name would otherwise be ignored without a word.
    expected = {f"{kind}.md" for kind in PLACEHOLDERS}
    unknown = sorted(path.name for path in override_dir.glob("*.md") if path.name not in expected)
    if unknown:
        raise TemplateError(
            f"{override_dir}: unknown templates {', '.join(unknown)};"
            f" expected any of {', '.join(sorted(expected))}"
        )
