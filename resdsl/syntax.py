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
    op: str  # + - * / // and the comparisons == != < > <= >=, and `and`, `or`
    left: Expr
    right: Expr
    span: Span


class Neg(NamedTuple):
    operand: Expr
    span: Span


class Not(NamedTuple):
    operand: Expr
    span: Span


class Choose(NamedTuple):
    """`then if condition else otherwise`"""

    then: Expr
    condition: Expr
    otherwise: Expr
    span: Span


Expr = Num | Ref | BinOp | Neg | Not | Choose


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
    """`256..480`, `0.08..1`"""

    low: int | float
    high: int | float
    span: Span


class Several(NamedTuple):
    """An option's values written one after another: `betas 0.9 0.999`."""

    values: tuple
    span: Span


Value = Expr | Str | Dims


class Call(NamedTuple):
    """`max(a, b, ...)`, `min(a, b, ...)`, `log2(a)` or `floor(a)`: a function of values."""

    name: str
    args: tuple
    span: Span


# the functions a value may call, and how many values each takes (None: two or more)
FUNCTIONS = {"max": None, "min": None, "log2": 1, "floor": 1}
EXPRESSIONS = (Num, Ref, BinOp, Neg, Not, Choose, Call)


class Option(NamedTuple):
    """`, name value` after a statement's main arguments."""

    name: Word
    value: Value | Several | None
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


# --- definitions of blocks, stems and shortcuts --------------------------------------------


class Layer(NamedTuple):
    """`conv1: conv 3x3 planes, stride stride`: a primitive layer, or a block used as a layer."""

    label: Word | None
    kind: Word
    kernel: Dims | None
    arg: Expr | None
    options: tuple[Option, ...]
    span: Span


class Group(NamedTuple):
    """`downsample: { ... }`: layers numbered 0, 1, ... under one name (an nn.Sequential)."""

    label: Word
    body: tuple
    span: Span


class Let(NamedTuple):
    """`width = planes * width_per_group // 64 * groups`"""

    name: Word
    value: Value
    span: Span


class If(NamedTuple):
    condition: Expr
    then: tuple
    otherwise: tuple | None
    span: Span


class Add(NamedTuple):
    """`add shortcut`: the main branch plus the network's shortcut; `add NAME`: the value plus
    the definition's input (`input`) or a kept value."""

    value: Word
    span: Span

    @property
    def shortcut(self) -> bool:
        return self.value.text == "shortcut"


class Each(NamedTuple):
    """`each i { ... }`: the body on each part of a split value, `i` the part's number; its
    layers are lists (one layer per part)."""

    name: Word
    body: tuple
    span: Span


class Branch(NamedTuple):
    """`branch`: a projecting shortcut reads the main branch here instead of the block's input."""

    span: Span


class Insert(NamedTuple):
    """`after bn3 { ... }` (or `before`) in a block that extends another."""

    where: str
    anchor: Word
    body: tuple
    span: Span


class Remove(NamedTuple):
    """`remove NAME` (a layer or group), or `remove add` (the add and its shortcut)."""

    name: Word
    span: Span


class Check(NamedTuple):
    """`check CONDITION, "what is wrong"`: a definition refuses arguments it cannot build."""

    condition: Expr
    message: Str
    span: Span


DefStatement = Layer | Group | Let | If | Add | Branch | Insert | Remove | Check | Each


class DefParam(NamedTuple):
    name: Word
    default: Value | None
    span: Span


class Definition(NamedTuple):
    """`block NAME(params) [extends NAME] { ... }`, or a stem or shortcut."""

    kind: str  # block | stem | shortcut
    name: Word
    params: tuple[DefParam, ...]
    extends: Word | None
    body: tuple
    span: Span  # the header: `block NAME`
    doc: str = ""  # the comment right above it


@dataclass
class SpecFile:
    path: str
    params: list[ParamDecl] = field(default_factory=list)
    networks: list[NetworkDecl] = field(default_factory=list)
    trains: list[TrainDecl] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=list)
