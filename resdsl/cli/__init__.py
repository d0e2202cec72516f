"""The `resdsl` command line. `check`, `summary` and `compile` (compiler.py) are always there;
the workflow's commands (workflow.py: plot, runs, list, new; fmt.py; show.py) are registered only
when one of them is asked for. No command imports torch or jax; every one fails through
`app.fail`."""

from __future__ import annotations

import os
import sys

import typer

from . import compiler  # noqa: F401  (registers check, summary, compile)
from .app import app

# The commands of the compile path: they run without registering the others (plot, runs, list,
# new, fmt, show), which typer would otherwise convert on every start.
CORE = ("check", "summary", "compile")
_workflow_registered = False


def register_workflow() -> None:
    """Add plot, runs, list, new, fmt and show to the command line (once)."""
    global _workflow_registered
    if not _workflow_registered:
        from .workflow import register

        register(app)
        _workflow_registered = True


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in CORE:
        register_workflow()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # a bug in resdsl, not a user mistake
        if os.environ.get("RESDSL_DEBUG"):
            raise
        typer.echo(
            f"resdsl: internal error: {type(error).__name__}: {error}\n"
            "  hint: this is a bug in resdsl; run again with RESDSL_DEBUG=1 for the traceback",
            err=True,
        )
        sys.exit(70)
