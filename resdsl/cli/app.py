"""The typer application every command is registered on, its options, and the one way every
command fails: `fail(report)` prints each diagnostic (`file:line:col`, the source line, a hint)
and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from ..diagnostics import Diagnostic, Report

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


def fail(report: Report) -> None:
    """Print every diagnostic and their count; exit 1 (every command's way to fail)."""
    typer.echo(report.render(), err=True)
    errors = sum(d.severity == "error" for d in report.diagnostics)
    typer.echo(f"{errors} error{'s' * (errors != 1)}", err=True)
    raise typer.Exit(1)


def error(message: str, hint: str | None = None) -> None:
    """Fail with one diagnostic that has no place in a spec (a path, a flag)."""
    fail(Report([Diagnostic(message, hint=hint)]))
