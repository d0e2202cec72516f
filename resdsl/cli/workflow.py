"""The commands around the compiler: plot and compare runs, list the library, start a new spec.

`register(app)` adds them, with fmt and show, to the command line. Like check, summary and compile,
none of them imports torch or jax; `plot` alone imports matplotlib, when it draws.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..diagnostics import SpecError
from .app import error, fail

RunsArgument = Annotated[
    list[Path],
    typer.Argument(
        metavar="RUN",
        help="Run directories written by a generated train.py (metrics.jsonl, final.json).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add plot, runs, list, new and fmt to the command line."""
    for command in (plot, runs_, list_, new):
        app.command(**COMMANDS[command.__name__])(command)
    from .fmt import EPILOG, fmt
    from .show import register as register_show

    app.command(epilog=EPILOG)(fmt)
    register_show(app)  # show: the table, or the picture


COMMANDS: dict[str, dict] = {}


def _command(name: str | None = None, **settings):
    def record(function):
        COMMANDS[function.__name__] = {"name": name, **settings}
        return function

    return record


@_command(
    epilog="Examples:\n\n\b\n"
    "  resdsl plot runs/plain20 runs/resnet20 -o fig6.png\n"
    "  resdsl plot runs/r20 runs/r20_2k -o r20.svg --title 'ResNet-20, two lengths'\n"
    "\nTraining error thin, test error bold with dots, learning-rate drops dotted."
)
def plot(
    runs: RunsArgument,
    output: Annotated[
        Path,
        typer.Option("-o", "--output", metavar="FILE", help="The figure: FILE.png or FILE.svg."),
    ] = Path("errors.png"),
    title: Annotated[str | None, typer.Option(metavar="TEXT", help="A title above it.")] = None,
) -> None:
    """Error curves of runs against iterations, in the layout of the paper's Fig. 6."""
    from ..plot import PlotError, plot_runs
    from ..runs import read_run

    read = [read_run(path) for path in runs]
    for run in read:
        for problem in run.problems:
            typer.echo(f"warning: {run.path.as_posix()}: {problem}", err=True)
    try:
        written = plot_runs(read, output, title=title)
    except PlotError as problem:
        error(str(problem), "give run directories that hold a metrics.jsonl")
    drawn = sum(bool(r.logs or r.test_curve()) for r in read)
    typer.echo(f"wrote {written.as_posix()} ({drawn} run{'s' * (drawn != 1)})")


@_command(
    "runs",
    epilog="Examples:\n\n\b\n"
    "  resdsl runs runs/plain20 runs/resnet20 runs/r20_2k\n"
    "  resdsl runs runs/* --json\n",
)
def runs_(
    runs: RunsArgument,
    json_: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, a row per run.")
    ] = False,
) -> None:
    """Compare runs: spec, iterations, final training error, test top-1/top-5, images/s, time."""
    from ..runs import read_run, table

    read = [read_run(path) for path in runs]
    if json_:
        typer.echo(json.dumps([r.summary() for r in read], indent=2))
    else:
        typer.echo(table(read))


@_command(
    "list",
    epilog="Examples:\n\n\b\n  resdsl list               # the library in specs/\n"
    "  resdsl list specs/cifar\n",
)
def list_(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Where the specs are (searched recursively)."),
    ] = Path("specs"),
) -> None:
    """The spec library as a table: network, depth, input, dataset, parameters, multiply-adds."""
    from ..library import library, library_table

    if not directory.is_dir():
        error(f"no such directory: {directory.as_posix()}", "give the directory of the specs")
    entries = library(directory)
    if not entries:
        error(f"no .res files in {directory.as_posix()}")
    typer.echo(library_table(directory, entries))


@_command(
    epilog="Example:\n\n\b\n"
    "  resdsl new specs/mine/resnet20_wide.res --from specs/cifar/resnet20.res\n"
)
def new(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The new spec (never overwritten).")],
    base: Annotated[
        Path,
        typer.Option("--from", metavar="SPEC", help="The spec it extends.", show_default=False),
    ],
) -> None:
    """Write a spec that extends SPEC, with SPEC's statements as commented overrides."""
    from ..frontend import load_spec
    from ..library import new_spec

    if file.suffix != ".res":
        error(f"{file.as_posix()}: a spec's name ends in .res")
    if file.exists():
        error(f"{file.as_posix()} exists; not overwriting it", "choose another name")
    try:
        text = new_spec(file, base)
    except SpecError as problem:
        fail(problem.report)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(file, "x", encoding="utf-8") as f:  # "x": never over a file made meanwhile
            f.write(text)
    except FileExistsError:
        error(f"{file.as_posix()} exists; not overwriting it", "choose another name")
    try:
        spec, analysis = load_spec(file)
    except SpecError as problem:  # a bug in `new`: say so, keep the file to look at
        fail(problem.report)
    typer.echo(
        f"wrote {file.as_posix()}: {spec.network.name} extends {base.as_posix()} "
        f"({analysis.depth} layers, {analysis.params:,} parameters)\n"
        f"next:  resdsl summary {file.as_posix()}"
    )
