"""Backends: from the IR to the files of a generated package, as {relative path: text}."""

from __future__ import annotations

from .. import ir
from ..analysis import Analysis

BACKENDS = ("torch", "jax")


def render(
    backend: str, spec: ir.Spec, analysis: Analysis, *, header: str, command: str, package: str
) -> dict[str, str]:
    """`header` opens every Python file; `command` regenerates the package into `package`."""
    if backend == "torch":
        from .torch import render_package
    else:
        from .jax import render_package
    return render_package(spec, analysis, header=header, command=command, package=package)
