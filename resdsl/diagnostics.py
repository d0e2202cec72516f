"""Source spans and diagnostics: what went wrong, where, and what to do.

Every stage reports problems as `Diagnostic` values collected in a `Report`; the CLI prints
them all at once as

    path:line:col: error: message
        the source line
        ^^^^^
      hint: what to do
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# Text of every file read so far, so that a diagnostic can show its source line.
_SOURCES: dict[str, str] = {}


def remember_source(path: str, text: str) -> None:
    _SOURCES[path] = text


def display_path(path: Path) -> str:
    """The path as a user wants to read it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Span(NamedTuple):
    """A region of a source file; lines and columns start at 1, `end_column` is exclusive."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class Diagnostic(NamedTuple):
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: str = "error"

    def render(self) -> str:
        where = f"{self.span}: " if self.span else "resdsl: "
        lines = [f"{where}{self.severity}: {self.message}"]
        if self.span is not None:
            lines += _excerpt(self.span)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0)
        return (self.span.path, self.span.line, self.span.column)


def _excerpt(span: Span) -> list[str]:
    text = _SOURCES.get(span.path)
    if text is None:
        return []
    source_lines = text.splitlines()
    if not 1 <= span.line <= len(source_lines):
        return []
    line = source_lines[span.line - 1].expandtabs(1)
    start = max(span.column - 1, 0)
    end = span.end_column - 1 if span.end_line == span.line else len(line.rstrip())
    width = max(1, min(end, max(len(line), start + 1)) - start)
    return ["    " + line.rstrip(), "    " + " " * start + "^" * width]


@dataclass
class Report:
    """Diagnostics collected while reading, resolving and checking specs."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        diagnostic = Diagnostic(message, span, hint)
        if diagnostic not in self.diagnostics:
            self.diagnostics.append(diagnostic)

    @property
    def failed(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def extend(self, other: Report) -> None:
        for d in other.diagnostics:
            if d not in self.diagnostics:
                self.diagnostics.append(d)

    def render(self) -> str:
        ordered = sorted(self.diagnostics, key=Diagnostic.sort_key)
        return "\n".join(d.render() for d in ordered)


class SpecError(Exception):
    """Raised with every diagnostic found once a stage cannot go on."""

    def __init__(self, report: Report):
        super().__init__(report.render())
        self.report = report


def did_you_mean(word: str, choices: list[str] | tuple[str, ...], what: str) -> str:
    """A hint naming the closest choice (if any) and listing all of them."""
    import difflib

    listing = ", ".join(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`? ({what}: {listing})"
    return f"{what}: {listing}"
