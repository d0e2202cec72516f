"""`resdsl fmt [--check] FILE...`: the command line. The formatter itself (`resdsl/fmt.py`) is
imported only when the command runs, so that registering it costs nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EPILOG = (
    "Examples:\n\n\b\n"
    "  resdsl fmt specs/mine.res                      # rewrite it in the canonical layout\n"
    "  resdsl fmt --check specs/*.res specs/*/*.res   # list what would change, exit 1 if any\n"
    "\nComments and meaning are kept; a file with syntax errors is left as it is."
)


def fmt(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...", help="Spec files to format in place.", show_default=False
        ),
    ],
    check: Annotated[
        bool,
        typer.Option("--check", help="Change nothing: list the files that would change, exit 1."),
    ] = False,
) -> None:
    """Lay out .res files the way the library is laid out (comments and meaning kept)."""
    from ..diagnostics import Report, display_path
    from ..fmt import FormatError, format_text, write_atomically
    from ..resolve import Loader
    from .app import fail

    report = Report()
    changed = 0
    for path in files:
        shown = display_path(path)
        text = Loader(report)._text(path, shown, None)
        if text is None:
            continue
        try:
            result = format_text(text, shown)
            if path.read_bytes() == result.encode("utf-8"):
                continue
            if not check:
                write_atomically(path, result)
        except FormatError as error:
            report.extend(error.report)
            continue
        except OSError as error:
            report.error(f"cannot write {shown}: {error.strerror or error}")
            continue
        changed += 1
        typer.echo(shown if check else f"reformatted {shown}")
    if report.failed:
        fail(report)
    if check and changed:
        raise typer.Exit(1)
