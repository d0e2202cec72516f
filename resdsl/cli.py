"""The `resdsl` command line: check, summary, compile.

None of these commands imports torch or jax.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .diagnostics import Diagnostic, Report, SpecError

EXAMPLES = """Examples:

\b
  resdsl check specs/*.res specs/*/*.res
  resdsl summary specs/resnet34.res
  resdsl summary specs/cifar/resnet20.res --set n=18 --json
  resdsl compile specs/fashion-mnist/resnet20.res --backend torch
  resdsl compile specs/torchvision/resnet50.res --backend jax -o out/resnet50_jax
  resdsl runs runs/plain20 runs/resnet20
  resdsl plot runs/plain20 runs/resnet20 -o fig6.png
  resdsl list specs
  resdsl new specs/mine.res --from specs/cifar/resnet20.res
"""

app = typer.Typer(
    help="ResNet variants as small declarative specs, compiled to PyTorch and JAX trainers.",
    epilog=EXAMPLES,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="NAME=VALUE", help="Override a `param` of the spec (repeatable)."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resdsl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """ResNet variants as small declarative specs, compiled to PyTorch and JAX trainers."""


def _fail(report: Report) -> None:
    """Print every diagnostic and their count; exit 1 (every command's way to fail)."""
    typer.echo(report.render(), err=True)
    errors = sum(d.severity == "error" for d in report.diagnostics)
    typer.echo(f"{errors} error{'s' * (errors != 1)}", err=True)
    raise typer.Exit(1)


@app.command(epilog="Example:  resdsl check specs/*.res specs/*/*.res")
def check(
    files: Annotated[
        list[Path],
        typer.Argument(metavar="FILE...", help="Spec files to check.", show_default=False),
    ],
) -> None:
    """Check specs: exit 0 when every file is valid, else print every problem and exit 1."""
    from .frontend import load_spec

    report = Report()
    for path in files:
        try:
            spec, analysis = load_spec(path)
        except SpecError as error:
            report.extend(error.report)
            continue
        typer.echo(
            f"ok  {spec.path}: {spec.network.name}, {analysis.depth} layers, "
            f"{analysis.params:,} parameters"
        )
    if report.failed:
        _fail(report)


@app.command(epilog="Example:  resdsl summary specs/cifar/resnet20.res --set n=18")
def summary(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The spec.", show_default=False)],
    set_: SetOption = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-stage output shapes, parameters and multiply-adds, and the totals."""
    from .frontend import load_spec
    from .summary import as_json, table

    try:
        spec, analysis = load_spec(file, set_ or [])
    except SpecError as error:
        _fail(error.report)
    typer.echo(as_json(analysis) if json else table(spec, analysis))


@app.command(
    "compile", epilog="Example:  resdsl compile specs/resnet34.res --backend torch -o out/r34"
)
def compile_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The spec.", show_default=False)],
    backend: Annotated[str, typer.Option(metavar="NAME", help="torch or jax.")] = "torch",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="DIR",
            help="Package directory [default: generated/ + the spec's path below specs/, e.g. "
            "generated/fashion_mnist_resnet20_torch].",
        ),
    ] = None,
    set_: SetOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a directory resdsl did not generate, or a package of another spec.",
        ),
    ] = False,
) -> None:
    """Generate a standalone training package for the spec."""
    from .compile import CompileError, compile_spec, written
    from .frontend import load_spec

    try:
        spec, analysis = load_spec(file, set_ or [])
    except SpecError as error:
        _fail(error.report)
    try:
        target = compile_spec(
            spec, analysis, backend=backend, output=output, sets=set_ or [], force=force
        )
    except CompileError as error:
        _fail(Report([Diagnostic(error.message, hint=error.hint)]))
    typer.echo(written(target))


# The commands of the compile path: they run without registering the others (plot, runs, list,
# new, fmt, show), which typer would otherwise convert on every start.
CORE = ("check", "summary", "compile")
_workflow_registered = False


def register_workflow() -> None:
    """Add plot, runs, list, new, fmt and show to the command line (once)."""
    global _workflow_registered
    if not _workflow_registered:
        from .workflow_cli import register

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


if __name__ == "__main__":
    main()
