"""The summary table and its JSON form."""

from __future__ import annotations

import json

from . import ir
from .analysis import Analysis, Part


def _shape(out: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in out)


def giga(macs: int) -> str:
    return f"{macs / 1e9:.2f} G" if macs >= 1e8 else f"{macs / 1e6:.1f} M"


def table(spec: ir.Spec, analysis: Analysis) -> str:
    net = analysis.network
    title = (
        f"{net.name} ({spec.path}): input {_shape(net.input)}, {net.classes} classes, "
        f"{analysis.depth} layers"
    )
    header = ("stage", "blocks", "output", "params", "multiply-adds")
    rows: list[tuple[str, ...]] = [header]

    def row(part: Part, blocks: str) -> None:
        rows.append((part.name, blocks, _shape(part.out), f"{part.params:,}", f"{part.macs:,}"))

    row(analysis.stem, "-")
    for part in analysis.stages:
        row(part, str(part.blocks))
    row(analysis.head, "-")
    rows.append(("total", "", "", f"{analysis.params:,}", f"{analysis.macs:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = (False, True, False, True, True)
    lines = [title, ""]
    for r in rows:
        cells = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, right)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(len(lines) - 1, "-" * len(lines[2]))
    lines[-1] += f"  ({giga(analysis.macs)}MACs)"
    return "\n".join(lines)


def as_json(analysis: Analysis) -> str:
    return json.dumps(analysis.to_json(), indent=2)
