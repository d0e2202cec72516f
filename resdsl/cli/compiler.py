"""The commands of the compile path: check, summary, compile. None imports torch or jax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..diagnostics import Diagnostic, Report, SpecError
from .app import SetOption, app, fail


@app.command(epilog="Example:  resdsl check specs/*.res specs/*/*.res")
def check(
    files: Annotated[
        list[Path],
        typer.Argument(metavar="FILE...", help="Spec files to check.", show_default=False),
    ],
) -> None:
    """Check specs: exit 0 when every file is valid, else print every problem and exit 1."""
    from ..frontend import load_spec

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
        fail(report)


@app.command(epilog="Example:  resdsl summary specs/cifar/resnet20.res --set n=18")
def summary(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The spec.", show_default=False)],
    set_: SetOption = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-stage output shapes, parameters and multiply-adds, and the totals."""
    from ..frontend import load_spec
    from ..summary import as_json, table

    try:
        spec, analysis = load_spec(file, set_ or [])
    except SpecError as error:
        fail(error.report)
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
    from ..compile import CompileError, compile_spec, written
    from ..frontend import load_spec

    try:
        spec, analysis = load_spec(file, set_ or [])
    except SpecError as error:
        fail(error.report)
    try:
        target = compile_spec(
            spec, analysis, backend=backend, output=output, sets=set_ or [], force=force
        )
    except CompileError as error:
        fail(Report([Diagnostic(error.message, hint=error.hint)]))
    typer.echo(written(target))
