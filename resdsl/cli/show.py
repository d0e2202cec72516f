"""`resdsl show SPEC [-o FILE.png|FILE.svg] [--layers] [--set NAME=VALUE]`: the command line.

The table and the picture are made by `resdsl/table.py` and `resdsl/picture.py`, imported (with the front end, and
matplotlib for a picture) only when the command runs, so that registering it costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FORMATS = (".png", ".svg")
PER_LAYER_LIMIT = 60  # deeper networks are drawn a box per block
FOLD_LIMIT = 60  # a picture of more blocks than this folds identical consecutive ones

EPILOG = (
    "Examples:\n\n\b\n"
    "  resdsl show specs/cifar/resnet20.res\n"
    "  resdsl show specs/resnet34.res --layers\n"
    "  resdsl show specs/resnet34.res -o resnet34.png\n"
    "  resdsl show specs/cifar/resnet20.res --set n=200 -o resnet1202.svg\n"
    "\nThe picture: a box per convolution, pool and fc (per block beyond "
    f"{PER_LAYER_LIMIT} layers); shortcuts as arcs, identity solid, projection dashed, "
    "zero-padding dotted."
)


def show(
    file: Annotated[Path, typer.Argument(metavar="SPEC", help="The spec.", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Draw the architecture into FILE.png or FILE.svg instead of printing the table.",
            show_default=False,
        ),
    ] = None,
    layers: Annotated[
        bool, typer.Option("--layers", help="A row per primitive layer, not per block.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="NAME=VALUE", help="Override a `param` of the spec (repeatable)."
        ),
    ] = None,
) -> None:
    """The network block by block: layers, output shape, parameters; or a picture of it."""
    from ..diagnostics import SpecError
    from ..frontend import load_spec
    from ..picture import ShowError, draw
    from ..table import table
    from .app import error, fail

    if output is not None and output.suffix.lower() not in FORMATS:
        error(f"{output.as_posix()}: the picture's name must end in .png or .svg",
              "e.g. -o resnet34.png")  # fmt: skip
    if output is not None and layers:
        error("--layers is for the table, and -o draws the picture: give one of them",
              "the picture has a box per layer up to 60 layers, per block beyond")  # fmt: skip
    try:
        spec, analysis = load_spec(file, set_ or [])
    except SpecError as problem:
        fail(problem.report)
    if output is None:
        typer.echo(table(spec, analysis, layers=layers))
        return
    net = analysis.network
    try:
        written = draw(analysis, output, f" {net.input[1]}x{net.input[2]}")
    except ShowError as problem:
        error(str(problem))
    except OSError as problem:
        reason = problem.strerror or str(problem)
        error(
            f"{output.as_posix()}: cannot write it: {reason}", "choose a directory you can write to"
        )
    typer.echo(f"wrote {written.as_posix()}")


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(show)
