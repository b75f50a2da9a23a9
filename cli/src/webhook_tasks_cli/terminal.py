"""Show text from outside (rows, events, answers) as it reads: not as markup or control codes."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text


def printable(text: str) -> str:
    """Return `text` with what would move the cursor or recolour the terminal escaped."""
    # ESC, newlines and bidi overrides are not printable; each becomes its \\x1b-style escape.
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def literal(text: object, style: str = "") -> Text:
    """Return `text` on one line, styled with `style`, with no markup or emoji codes read."""
    return Text(printable(str(text)), style=style)


def plain_number(value: float) -> str:
    """Return `value` as reported, never in exponent form: 0.00001, 42.5, 100."""
    # `show` and the step printer both print progress: 40%, not 40.0%.
    return f"{value:f}".rstrip("0").rstrip(".")


class Folded:
    """Render `renderable` wrapped at the width, a word too long for a line folded onto the next."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render as a console that does not soft-wrap would."""
        # Soft-wrapped, Markdown's quotes, lists and indented text are cut at the width instead:
        # a long URL or reason would lose its end.
        yield from console.render(self.renderable, options.update(no_wrap=False, overflow="fold"))
