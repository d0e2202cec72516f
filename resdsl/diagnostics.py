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
_LINES: dict[str, list[str]] = {}  # the same, split once

# At most this many diagnostics are printed (the first, in file order); the count of the rest
# follows. A source line is shown in a window of this many characters around the fault.
MAX_SHOWN = 50
EXCERPT_WIDTH = 120


def remember_source(path: str, text: str) -> None:
    _SOURCES[path] = text
    _LINES.pop(path, None)


def forget_sources() -> None:
    """Drop the texts kept for excerpts (a long-running process that checks many files)."""
    _SOURCES.clear()
    _LINES.clear()


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
        lines = [f"{where}{self.severity}: {printable(self.message)}"]
        if self.span is not None:
            lines += _excerpt(self.span)
        if self.hint:
            lines.append(f"  hint: {printable(self.hint)}")
        return "\n".join(lines)

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0)
        return (self.span.path, self.span.line, self.span.column)


def printable(text: str) -> str:
    """`text` safe for a terminal: a control or formatting character (BEL, NUL, an escape, a
    right-to-left override) is written as its escape, `\\x07`, `\\u202e`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


def _excerpt(span: Span) -> list[str]:
    if span.path not in _LINES:
        text = _SOURCES.get(span.path)
        if text is None:
            return []
        _LINES[span.path] = text.split("\n")  # as the parser counts lines: U+2028 is no break
    source_lines = _LINES[span.path]
    if not 1 <= span.line <= len(source_lines):
        return []
    line = source_lines[span.line - 1].expandtabs(1).rstrip()
    line = "".join(c if c.isprintable() else "?" for c in line)
    start = max(span.column - 1, 0)
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    width = max(1, min(end, max(len(line), start + 1)) - start)
    if len(line) > EXCERPT_WIDTH:  # a very long line: a window around the fault
        left = max(0, min(start - EXCERPT_WIDTH // 3, len(line) - EXCERPT_WIDTH))
        line = line[left : left + EXCERPT_WIDTH]
        start -= left
        width = max(1, min(width, len(line) - start))
    return ["    " + line, "    " + " " * start + "^" * width]


@dataclass
class Report:
    """Diagnostics collected while reading, resolving and checking specs."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    _seen: set = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._seen.update(self.diagnostics)

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        self.add(Diagnostic(message, span, hint))

    def add(self, diagnostic: Diagnostic) -> None:
        if diagnostic not in self._seen:
            self._seen.add(diagnostic)
            self.diagnostics.append(diagnostic)

    @property
    def failed(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def extend(self, other: Report) -> None:
        for d in other.diagnostics:
            self.add(d)

    def render(self, limit: int | None = MAX_SHOWN) -> str:
        """Every diagnostic, in file order; of each file, the first `limit` and a count."""
        ordered = sorted(self.diagnostics, key=Diagnostic.sort_key)
        lines: list[str] = []
        shown: dict[str, int] = {}
        for d in ordered:
            path = d.span.path if d.span else ""
            shown[path] = shown.get(path, 0) + 1
            if limit is None or shown[path] <= limit:
                lines.append(d.render())
            elif shown[path] == limit + 1:
                rest = sum(1 for e in ordered if (e.span.path if e.span else "") == path) - limit
                where = f" in {path}" if path else ""
                lines.append(
                    f"... and {rest} more error{'s' * (rest != 1)}{where} (fix these first)"
                )
        return "\n".join(lines)


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
