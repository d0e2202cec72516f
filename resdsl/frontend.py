"""The whole front end in one call: read, resolve and analyse a spec, or raise every problem."""

from __future__ import annotations

from pathlib import Path

from . import ir
from .analysis import Analysis, analyse
from .diagnostics import Report, SpecError
from .resolve import load


def load_spec(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> tuple[ir.Spec, Analysis]:
    """The resolved spec and its analysis; raises `SpecError` with all diagnostics."""
    report = Report()
    spec = load(path, sets, report)
    analysis = analyse(spec, report) if spec is not None else None
    if spec is None or analysis is None or report.failed:
        raise SpecError(report)
    return spec, analysis


def check(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Report:
    """Every diagnostic for one file (empty when it is valid)."""
    try:
        load_spec(path, sets)
    except SpecError as error:
        return error.report
    return Report()
