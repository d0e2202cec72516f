"""The parsed form of a .res file: statements and values as written, each with its span.

Nodes are named tuples: immutable, compared by value, and cheap to define.

Nothing here is checked beyond the grammar; `resolve.py` gives these meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .diagnostics import Span


class Num(NamedTuple):
    value: int | float
    span: Span


class Ref(NamedTuple):
    """A name in a value position: a parameter, or a symbol such as `fan_out`."""

    name: str
    span: Span


class BinOp(NamedTuple):
    op: str  # "+", "-", "*"
    left: Expr
    right: Expr
    span: Span


class Neg(NamedTuple):
    operand: Expr
    span: Span


Expr = Num | Ref | BinOp | Neg


class Word(NamedTuple):
    """A bare name in a keyword position: `basic` in `block basic`."""

    text: str
    span: Span


class Str(NamedTuple):
    value: str
    span: Span


class Dims(NamedTuple):
    """`3x224x224` (a shape) or `3x3` (a kernel size)."""

    values: tuple[int, ...]
    span: Span

    def __str__(self) -> str:
        return "x".join(str(v) for v in self.values)


class Range(NamedTuple):
    """`256..480`"""

    low: int
    high: int
    span: Span


Value = Expr | Str | Dims


class Option(NamedTuple):
    """`, name value` after a statement's main arguments."""

    name: Word
    value: Value | None
    span: Span


class Step(NamedTuple):
    """One step of a pipeline list: `pad 4`, `hflip`, `multiscale 224 256`."""

    name: Word
    args: tuple[Num | Ref | Range, ...]
    span: Span


class Statement(NamedTuple):
    """One line of a network or train body.

    `keyword` is the statement's first word (`stage`, `block`, ...); `form` tells the variants of
    `schedule` (at, on_plateau, constant) and `warmup` (until, for) apart. `args` are the
    positional values in grammar order; `label` is a stage's optional name.
    """

    keyword: str
    span: Span
    args: tuple = ()
    options: tuple[Option, ...] = ()
    label: Word | None = None
    form: str | None = None


class ParamDecl(NamedTuple):
    name: Word
    value: Expr
    span: Span


class NetworkDecl(NamedTuple):
    name: Word
    extends: Str | None
    body: tuple[Statement, ...]
    span: Span


class TrainDecl(NamedTuple):
    recipe: Word | None
    body: tuple[Statement, ...] | None
    span: Span


@dataclass
class SpecFile:
    path: str
    params: list[ParamDecl] = field(default_factory=list)
    networks: list[NetworkDecl] = field(default_factory=list)
    trains: list[TrainDecl] = field(default_factory=list)
