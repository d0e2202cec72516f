"""The block classes a network needs, and a definition's values as Python expressions: what
both model emitters share, and what `resdsl check` verifies so that every valid spec compiles.

A block class is one definition as the network uses it. Its parameters that are the same in
every block of the network are folded into the code as constants; those that differ (the
stage's width, stride, dilation, drop rate, ...) become constructor arguments, as in
torchvision's `BasicBlock(inplanes, planes, stride, downsample)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import syntax as s
from .definitions import FlatDef, Sym
from .layers import KINDS
from .lower import Add, Block, Branch, Group, Layer, Lowered

# Given by the stage to each block (and so constructor arguments of every class that has them).
STAGE_ARGS = ("planes", "stride")


class EmitError(Exception):
    """A definition the emitters cannot print as a class; the message says why."""


# --- expressions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """A Python expression that depends on constructor arguments; `level` is its precedence."""

    text: str
    level: int


LEVELS = {"or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, ">": 4, "<=": 4, ">=": 4,
          "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "neg": 7, "atom": 9}  # fmt: skip


def literal(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Sym):
        return repr(str(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(map(str, value)) + ")"
    return str(value)


def show(value) -> str:
    """A constant or a Code as Python text."""
    return value.text if isinstance(value, Code) else literal(value)


def _wrap(value, level: int, right: bool = False) -> str:
    text = show(value)
    own = value.level if isinstance(value, Code) else (7 if _negative(value) else 9)
    return f"({text})" if own < level or (right and own == level) else text


def _negative(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < 0


@dataclass
class Folder:
    """Folds an expression: constants are computed, names in `code` are printed as given."""

    constants: dict
    code: dict[str, str]  # name -> its Python spelling (`inplanes`, `self.inplanes`, ...)

    def fold(self, expr):
        if isinstance(expr, s.Num):
            return expr.value
        if isinstance(expr, s.Dims):
            return expr.values
        if isinstance(expr, s.Ref):
            if expr.name in self.code:
                return Code(self.code[expr.name], 9)
            if expr.name in self.constants:
                return self.constants[expr.name]
            return Sym(expr.name)
        if isinstance(expr, s.Neg):
            value = self.fold(expr.operand)
            return Code(f"-{_wrap(value, 7)}", 7) if isinstance(value, Code) else -value
        if isinstance(expr, s.Not):
            value = self.fold(expr.operand)
            return Code(f"not {_wrap(value, 3)}", 3) if isinstance(value, Code) else not value
        if isinstance(expr, s.Choose):
            condition = self.fold(expr.condition)
            if not isinstance(condition, Code):
                return self.fold(expr.then if condition else expr.otherwise)
            then, otherwise = self.fold(expr.then), self.fold(expr.otherwise)
            return Code(f"{_wrap(then, 1)} if {show(condition)} else {_wrap(otherwise, 1)}", 0)
        return self._binop(expr.op, self.fold(expr.left), self.fold(expr.right))

    def _binop(self, op: str, left, right):
        if not isinstance(left, Code) and not isinstance(right, Code):
            return _compute(op, left, right)
        if op in ("and", "or"):  # a known side may decide the condition
            known = right if isinstance(left, Code) else left
            other = left if isinstance(left, Code) else right
            if isinstance(known, bool):
                if known == (op == "or"):
                    return known
                return other
        if op in ("*",) and (left == 1 or right == 1):
            return right if left == 1 else left
        if op in ("+", "-") and right == 0 and not isinstance(right, bool):
            return left
        if op == "+" and left == 0 and not isinstance(left, bool):
            return right
        if op in ("//", "/") and right == 1:
            return left
        if op == "//" and isinstance(left, Code) and isinstance(right, int):
            suffix = f" * {right}"
            if left.level == 6 and left.text.endswith(suffix) and "/" not in left.text:
                return Code(left.text[: -len(suffix)], 6)  # (x * c) // c is x
        level = LEVELS[op]
        return Code(f"{_wrap(left, level)} {op} {_wrap(right, level, right=True)}", level)


def _compute(op: str, left, right):
    return {
        "+": lambda: left + right,
        "-": lambda: left - right,
        "*": lambda: left * right,
        "/": lambda: left / right,
        "//": lambda: left // right,
        "==": lambda: left == right,
        "!=": lambda: left != right,
        "<": lambda: left < right,
        ">": lambda: left > right,
        "<=": lambda: left <= right,
        ">=": lambda: left >= right,
        "and": lambda: left and right,
        "or": lambda: left or right,
    }[op]()


def negate(condition) -> Code | bool:
    """`not condition`, with comparisons flipped and De Morgan applied where it reads better."""
    if not isinstance(condition, Code):
        return not condition
    return Code(f"not ({condition.text})", 3)


def negate_expr(expr):
    """The syntax of `not expr`, pushed inwards: `a != b or c != d` -> `a == b and c == d`."""
    flips = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
    if isinstance(expr, s.BinOp) and expr.op in flips:
        return expr._replace(op=flips[expr.op])
    if isinstance(expr, s.BinOp) and expr.op in ("and", "or"):
        return expr._replace(
            op="or" if expr.op == "and" else "and",
            left=negate_expr(expr.left),
            right=negate_expr(expr.right),
        )
    if isinstance(expr, s.Not):
        return expr.operand
    return s.Not(expr, expr.span)


def fold_let(st: s.Let, folder: Folder) -> str | None:
    """Fold `NAME = value` into `folder`; the assignment to print when the value is an expression
    of constructor arguments (a bare name, such as `self.planes`, is used where it stands)."""
    value = folder.fold(st.value)
    name = st.name.text
    if isinstance(value, Code) and not value.text.replace(".", "").isidentifier():
        folder.code[name] = name
        return f"{name} = {value.text}"
    if isinstance(value, Code):
        folder.code[name] = value.text
    else:
        folder.constants[name] = value
    return None


def decided(condition, folder: Folder, what: str) -> bool:
    """An `if`'s condition, which must be the same for every block of a class."""
    value = folder.fold(condition)
    if isinstance(value, Code):
        raise EmitError(
            f"an `if` of {what} depends on `{value.text}`, which differs between its blocks; "
            "write two blocks instead"
        )
    return value


def group_layers(body, folder: Folder):
    """The layers of a numbered group, its `if`s decided and its values folded."""
    for st in body:
        if isinstance(st, s.If):
            taken = st.then if decided(st.condition, folder, "a group") else st.otherwise
            yield from group_layers(taken or (), folder)
        elif isinstance(st, s.Layer):
            yield st
        elif isinstance(st, s.Let) and fold_let(st, folder) is not None:
            raise EmitError("a value computed inside a group must not depend on a varying value")


def layer_arguments(st: s.Layer, folder: Folder) -> dict | None:
    """A layer's arguments as the emitters print them: every option with its default, folded
    (a Code where it depends on a constructor argument); None for a layer that vanishes at 0."""
    kind = KINDS[st.kind.text]
    raw = {}
    if st.kernel is not None:
        raw["kernel"] = st.kernel.values
    if st.arg is not None:
        value = folder.fold(st.arg)
        if kind.kernel and "kernel" not in raw:
            raw["kernel"] = (value, value)
        else:
            raw[kind.positional] = value
    for option in st.options:
        raw[option.name.text] = True if option.value is None else folder.fold(option.value)
    args = {name: raw.get(name, option.default) for name, option in kind.options.items()}
    if kind.kernel:
        args["kernel"] = raw["kernel"]
        if args.get("stride", 0) is None:
            args["stride"] = args["kernel"][0]
        if "padding" in args and args["padding"] is None:
            args["padding"] = 0  # a pool, as PyTorch's; a convolution keeps the size
            if kind.name == "conv":
                dilation, k = args["dilation"], args["kernel"][0]
                args["padding"] = (
                    dilation * (k - 1) // 2 if not isinstance(dilation, Code) else
                    (dilation if k == 3 else Code(f"{dilation.text} * {(k - 1) // 2}", 6))
                )  # fmt: skip
    if kind.vanishes_at_zero and args[kind.vanishes_at_zero] == 0:
        return None
    return args


# --- block classes --------------------------------------------------------------------------


@dataclass
class BlockClass:
    definition: FlatDef
    residual: bool
    name: str
    instances: list[Block] = field(default_factory=list)
    constants: dict = field(default_factory=dict)
    variables: list[str] = field(default_factory=list)
    expansion: int | None = None  # out channels / planes, for blocks of stages

    @property
    def stage_block(self) -> bool:
        return self.instances[0].name is None

    def folder(self, code: dict[str, str] | None = None) -> Folder:
        names = {"inplanes": "inplanes", **{v: v for v in self.variables}}
        if self.expansion is not None and "expansion" not in self.variables:
            names["expansion"] = "self.expansion"
        return Folder(dict(self.constants), {**names, **(code or {})})


def class_name(definition: str, residual: bool, defined_residual: bool) -> str:
    words = "".join(part.capitalize() for part in definition.split("_"))
    if not words.endswith(("Block", "neck")):
        words += "Block"
    return words if residual or not defined_residual else "Plain" + words


def block_classes(lowered: Lowered) -> list[BlockClass]:
    """The classes the network needs, sub-blocks (blocks used as layers) first."""
    classes: dict[tuple[str, bool], BlockClass] = {}
    order: list[tuple[str, bool]] = []

    def visit(block: Block) -> None:
        for item in block.items:
            if isinstance(item, Block):
                visit(item)
        definition = lowered.definitions.blocks[block.definition]
        key = (block.definition, block.residual)
        if key not in classes:
            defined_residual = _has_add(definition.body)
            classes[key] = BlockClass(
                definition, block.residual,
                class_name(block.definition, block.residual, defined_residual),
            )  # fmt: skip
            order.append(key)
        classes[key].instances.append(block)

    for block in lowered.blocks():
        visit(block)
    net = lowered.network
    forced = set(STAGE_ARGS)
    if any(stage.dilation != 1 for stage in net.stages):
        forced.add("dilation")
    if net.drop_path:
        forced.add("drop_path")
    for cls in classes.values():
        _classify(cls, forced)
    return [classes[key] for key in order]


def _classify(cls: BlockClass, stage_args: set[str]) -> None:
    """Constants and constructor arguments; `stage_args` are given by the stages to every block."""
    names = cls.definition.param_names()
    for name in names:
        values = {_key(block.args[name]) for block in cls.instances}
        forced = cls.stage_block and name in stage_args
        if len(values) > 1 or forced:
            cls.variables.append(name)
        else:
            cls.constants[name] = cls.instances[0].args[name]
    if cls.stage_block and "planes" in names:
        ratios = {block.out[0] / block.args["planes"] for block in cls.instances}
        ratio = ratios.pop()
        if ratios or not float(ratio).is_integer():
            raise EmitError(
                f"block `{cls.definition.name}`: its output channels are not a fixed multiple of "
                "`planes` (torchvision's `expansion`), so its stages cannot be built in a loop"
            )
        cls.expansion = int(ratio)
        cls.constants.setdefault("expansion", cls.expansion)


def _key(value):
    return (type(value).__name__, value)


def _has_add(body) -> bool:
    for st in body:
        if isinstance(st, s.Add):
            return True
        if isinstance(st, s.If) and (_has_add(st.then) or _has_add(st.otherwise or ())):
            return True
    return False


def shortcut_reads(cls: BlockClass) -> str:
    """What a class's downsample reads: `x` (the block's input), `branch` (the main branch at
    `branch`), or `mixed` (projections read the branch, option A's padding the input)."""
    has_branch = any(isinstance(item, Branch) for b in cls.instances for item in b.items)
    if not has_branch:
        return "x"
    kinds = {
        add.shortcut.projects
        for block in cls.instances
        for add in block.items
        if isinstance(add, Add) and add.shortcut is not None
    }
    if kinds == {False}:
        return "x"
    return "branch" if kinds == {True} else "mixed"


def class_problems(lowered: Lowered) -> list[str]:
    """Why the network's blocks cannot be printed as classes (none for a valid network)."""
    try:
        classes = block_classes(lowered)
    except EmitError as error:
        return [str(error)]
    problems = []
    for cls in classes:
        folder = cls.folder()

        def walk(body) -> None:
            for st in body:
                if isinstance(st, s.Let):
                    value = folder.fold(st.value)
                    if not isinstance(value, Code):
                        folder.constants[st.name.text] = value
                elif isinstance(st, s.If):
                    condition = folder.fold(st.condition)
                    if isinstance(condition, Code):
                        problems.append(
                            f"an `if` of block `{cls.definition.name}` depends on "
                            f"`{condition.text}`, which differs between its blocks; write two "
                            "blocks instead (or give the value per stage)"
                        )
                        continue
                    walk(st.then if condition else (st.otherwise or ()))

        walk(cls.definition.body)
    return problems


__all__ = ["Add", "Branch", "Group", "Layer", "class_problems"]
