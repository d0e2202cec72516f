"""The Jinja environment shared by the backends, and facts about a spec that both render."""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

from .. import __version__, ir
from ..analysis import Analysis, projects
from ..summary import giga, table


def templates_dir() -> Path:
    """`templates/` of a source checkout, or the copy shipped inside the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("resdsl's templates are missing from this installation")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.filters["giga"] = giga
    env.filters["pyfloat"] = repr
    return env


def render_template(name: str, **context) -> str:
    return environment().get_template(name).render(version=__version__, **context)


def describe_shortcut(kind: str) -> str:
    return {
        "A": "option A: identity, subsampled and zero-padded where the shape changes",
        "B": "option B: a 1x1 projection where the shape changes, identity elsewhere",
        "C": "option C: a 1x1 projection on every shortcut",
        "D": "average pool, then a 1x1 projection where the shape changes (ResNet-D)",
        "none": "no shortcut (a plain network)",
    }[kind]


def stage_rows(spec: ir.Spec, analysis: Analysis) -> list[dict]:
    """One row per stage with what every template needs to know about it."""
    rows = []
    cin = spec.network.stem.width
    for index, (stage, part) in enumerate(zip(spec.network.stages, analysis.stages), start=1):
        rows.append(
            {
                "index": index,
                "name": stage.name,
                "blocks": stage.blocks,
                "width": stage.width,
                "stride": stage.stride,
                "shortcut": stage.shortcut,
                "out": "x".join(str(v) for v in part.out),
                "in_channels": cin,
                "out_channels": stage.out_channels,
                "first_projects": projects(stage.shortcut, cin, stage.out_channels, stage.stride),
            }
        )
        cin = stage.out_channels
    return rows


def readme_context(spec: ir.Spec, analysis: Analysis) -> dict:
    return {"summary_table": table(spec, analysis)}
