"""Every bound resdsl puts on its input, in one place: a spec from anywhere is read in bounded
time and memory, and a value beyond a bound is a located error, never a crash."""

from __future__ import annotations

import math

from .diagnostics import Report, Span

MAX_SPEC_BYTES = 1 << 20  # a .res file (the library's largest is under 4 KiB)
MAX_NUMBER_DIGITS = 30  # a written number
MAX_MAGNITUDE = 1e15  # any value, written or computed
MAX_WHOLE = 10**9  # counts, widths, classes, iterations, ...
MAX_BATCH = 1 << 20  # images in one batch
MAX_OPERATORS = 200  # + - * / ( in one statement: keeps expression trees shallow
MAX_NESTING = 32  # { } inside each other (definitions' `if`s and groups)
MAX_LAYERS = 100_000  # of a network, as the paper counts them (weighted layers on the main path)
MAX_ALL_LAYERS = 200_000  # of a network: every layer, of blocks used as layers too
MAX_SPATIAL = 1024  # a kernel size, stride, dilation or padding
MAX_DEFINITION_NESTING = 16  # blocks used as layers of blocks used as layers of ...
MAX_PARAMS = 10_000_000_000  # of a network


def bounded(value, span: Span, report: Report):
    """`value`, or None (and an error) when it is not finite or beyond MAX_MAGNITUDE."""
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        report.error(
            f"this value is too large (its magnitude exceeds {MAX_MAGNITUDE:.0e})",
            span,
            "check the parameters it uses",
        )
        return None
    return value
