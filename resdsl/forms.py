"""The block-class form: a definition as a network uses it, lowered once (`interpret.py`).

A form is what a generated class holds: the values of its parameters (a constant folded into the
code, or a `Var` for a constructor argument), and its layers and statements in order, as nodes
whose arguments and channel counts are `symbolic` values. The backends print forms and nothing
else; the concrete layers, shapes and costs of each block come from its class's form by
substitution (`lower.instantiate`), so what `summary` counts is what the printed code builds.

Spatial sizes are not part of a form: they are computed per block, from the concrete arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from . import syntax as s
from .definitions import FlatDef


class LayerNode(NamedTuple):
    """A primitive layer. `attr` is its attribute (and state_dict key when `labelled`); layers
    no one named get a name of their own, shared by identical parameter-free layers."""

    attr: str
    kind: str
    args: dict  # every argument of the kind, defaults filled in
    inp: object  # channels in
    out: object  # channels out
    labelled: bool
    source: s.Layer


class GroupNode(NamedTuple):
    """Layers numbered 0, 1, ... under one name (an nn.Sequential); lets may sit between them."""

    attr: str
    nodes: tuple  # LayerNode | LetNode
    inp: object
    out: object
    source: s.Group


class CallNode(NamedTuple):
    """A block used as a layer: its class is the `role="layer"` class of `definition`."""

    attr: str
    definition: str
    args: dict  # every parameter's value at the call (the defaults computed there)
    inp: object
    out: object
    source: s.Layer


class LetNode(NamedTuple):
    """`name = value` where the value depends on constructor arguments: a local in the code."""

    name: str
    value: object
    source: s.Let


class CheckNode(NamedTuple):
    """`check CONDITION, "message"` whose condition is known per block only."""

    condition: object
    message: str
    source: s.Check


class AddNode(NamedTuple):
    """`add shortcut`: the main branch plus the network's shortcut for this block."""

    source: s.Add


class BranchNode(NamedTuple):
    """`branch`: a projecting shortcut reads the main branch here."""

    source: s.Branch


class KeepNode(NamedTuple):
    """`keep NAME`: the value here, read later by `multiply NAME` or `add NAME`."""

    name: str
    channels: object
    parts: object  # None, or the number of parts of a split value
    source: s.Layer


class EachNode(NamedTuple):
    """`each NAME { ... }`: `nodes` run on each of `count` parts, `NAME` the part's number; the
    layers named inside are lists, one layer per part."""

    name: str
    count: object
    nodes: tuple
    inp: object  # channels of a part, in
    out: object
    source: s.Each


class WhenNode(NamedTuple):
    """An `if` whose condition is known per block only (a shortcut's `stride != 1`)."""

    condition: object
    then: tuple
    otherwise: tuple
    source: s.If


class Form(NamedTuple):
    definition: FlatDef
    params: dict  # parameter -> its value in this form (a constant, a Var or a Named)
    nodes: tuple
    inp: object  # channels in (`inplanes`)
    out: object  # channels out
    lets: dict  # let -> its value in terms of the parameters (what a LetNode's local holds)
    calls: tuple  # every CallNode, nested ones included
    parts: object = None  # the parts of its output, when it ends split (a block used as a layer)

    def resolved(self, value):
        """`value` with the form's locals replaced by what they hold."""
        from .symbolic import substitute

        return substitute(value, self.lets) if self.lets else value


@dataclass(eq=False)
class BlockClass:
    """One generated class: a definition in one role (`stage` block or `layer` of another)."""

    name: str  # the Python class name, unique in model.py
    definition: FlatDef
    role: str  # stage | layer
    residual: bool
    form: Form
    variables: list[str]  # constructor arguments besides `inplanes`, in definition order
    spelling: dict[str, str]  # a parameter's or let's name in Python (`x` -> `x_` where taken)
    defaults: dict = field(default_factory=dict)  # constructor arguments with constant defaults
    expansion: int | None = None  # out channels / planes, for classes of stages
    shortcuts: tuple[str, ...] = ()  # the shortcut options of its blocks ("none" excluded)
    reads: str = "x"  # what its downsample reads: x | branch (at `branch`) | mixed
    instances: list = field(default_factory=list)  # the concrete blocks built from it

    @property
    def constants(self) -> dict:
        return {k: v for k, v in self.form.params.items() if k not in self.variables}


def walk(nodes):
    """Every node, with the nodes inside groups, `each` and both sides of a `WhenNode`."""
    for node in nodes:
        yield node
        if isinstance(node, GroupNode | EachNode):
            yield from walk(node.nodes)
        elif isinstance(node, WhenNode):
            yield from walk(node.then)
            yield from walk(node.otherwise)


def guard(form: Form) -> tuple[tuple, WhenNode] | None:
    """A shortcut that is all inside one `if` (after its values): (the values, the `if`). The
    code returns None (the identity) where its condition is false."""
    *lets, last = form.nodes or (None,)
    if (
        isinstance(last, WhenNode)
        and not last.otherwise
        and all(isinstance(n, LetNode) for n in lets)
    ):
        return tuple(lets), last
    return None


def each_lists(node: EachNode) -> dict[str, object]:
    """The layers named inside `each` (lists, one layer per part) -> how many parts hold one:
    the count of parts, or N where they sit under `if`s on the part's number that hold for the
    first N parts (Res2Net's `if i < scale - 1`); None where the `if`s hold for other parts, or
    read values other than the part's number."""
    from .symbolic import EvalError, apply, concrete, constant, symbolic

    def size(conditions: tuple):
        if not conditions:
            return node.count
        count = constant(node.count)
        if symbolic(count):
            return None
        held = []
        for i in range(count):
            try:
                held.append(all(concrete(c, {node.name: i}) is True for c in conditions))
            except EvalError:
                return None
        first = sum(held)
        return first if held == [True] * first + [False] * (count - first) else None

    sizes: dict[str, object] = {}

    def visit(nodes, conditions: tuple) -> None:
        for n in nodes:
            if isinstance(n, WhenNode):
                visit(n.then, (*conditions, n.condition))
                visit(n.otherwise, (*conditions, apply("not", n.condition)))
            elif isinstance(n, CallNode | GroupNode) or (isinstance(n, LayerNode) and n.labelled):
                sizes[n.attr] = size(conditions)

    visit(node.nodes, ())
    return sizes
