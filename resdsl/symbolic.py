"""The values written inside definitions, known now or only when a block is built.

A value is a constant (a number, a condition, a word such as `inverted`, a kernel size such as
`(3, 3)`) or an expression of names that are known only per block: a block class's constructor
arguments (`planes`, `stride`) and the channels that come in (`inplanes`). Both kinds go through
the same operations: `apply(op, ...)` computes when every operand is a constant and builds an
`Op` otherwise, simplified as a person writes it (`x * 1` is `x`, `x * 64 // 64` is `x`), so that
comparisons, `and`/`or`/`not` and `a if c else b` mean the same on both. `substitute` gives an
expression's value once its names are known: the concrete shapes and costs of a block come from
its class's form by substitution. `text` prints a value as Python, for both backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .limits import MAX_MAGNITUDE


class Sym(str):
    """A bare word used as a value: `inverted` in `drop_mode = inverted`."""


Const = int | float | bool | Sym | tuple


@dataclass(frozen=True, slots=True)
class Var:
    """A name known per block. `type`: int | float | bool | word | dims | any (not yet known)."""

    name: str
    type: str = "any"


@dataclass(frozen=True, slots=True)
class Named:
    """A constant printed by its name: a block's `expansion` reads `self.expansion`."""

    name: str
    value: Const


@dataclass(frozen=True, slots=True)
class Op:
    """`op` applied to `args`: + - * / // neg not and or == != < > <= >= choose int."""

    op: str
    args: tuple
    type: str
    span: object = field(default=None, compare=False, hash=False)


Value = Const | Var | Named | Op
SYMBOLIC = (Var, Named, Op)


class EvalError(Exception):
    """A value that cannot be computed: division by zero, a word in arithmetic, too large."""

    def __init__(self, message: str, span=None, hint: str | None = None):
        super().__init__(message)
        self.message, self.span, self.hint = message, span, hint


def symbolic(value) -> bool:
    return isinstance(value, Var | Op)


def type_of(value) -> str:
    if isinstance(value, Var | Op):
        return value.type
    if isinstance(value, Named):
        return type_of(value.value)
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, tuple):
        return "dims"
    return "word"


def constant(value):
    """The value with named constants replaced by what they stand for (symbolic parts stay)."""
    return value.value if isinstance(value, Named) else value


def names(value) -> set[str]:
    """The names a value depends on."""
    if isinstance(value, Var):
        return {value.name}
    if isinstance(value, Op):
        return set().union(*(names(a) for a in value.args))
    return set()


# --- operations -------------------------------------------------------------------------------

ARITHMETIC = ("+", "-", "*", "/", "//")
COMPARISONS = ("==", "!=", "<", ">", "<=", ">=")
NUMBERS = ("int", "float", "any")


def _number_type(op: str, types: list[str]) -> str:
    if "any" in types:
        return "any"
    if op == "/" or "float" in types:
        return "float"
    return "int"


def _needs_number(value, span) -> None:
    kind = type_of(value)
    if kind not in NUMBERS:
        shown = value.name if isinstance(value, Var) else text(value)
        raise EvalError(
            f"unknown name `{value}`" if isinstance(value, Sym) else
            f"a number is needed here, got {shown}",
            span,
        )  # fmt: skip


def _needs_condition(value, span, what: str) -> None:
    if type_of(value) not in ("bool", "any"):
        raise EvalError(what, span)


def _bounded(value, span):
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise EvalError(
            f"this value is too large (its magnitude exceeds {MAX_MAGNITUDE:.0e})",
            span,
            "check the parameters it uses",
        )
    return value


def _compute(op: str, left, right, span):
    if op in ("/", "//") and right == 0:
        raise EvalError("division by zero", span)
    result = {
        "+": lambda: left + right,
        "-": lambda: left - right,
        "*": lambda: left * right,
        "/": lambda: left / right,
        "//": lambda: left // right,
    }[op]()
    return _bounded(result, span)


def apply(op: str, *args, span=None):
    """`op` of `args`: a constant when every argument is one, an `Op` otherwise."""
    values = [constant(a) for a in args]
    known = not any(symbolic(v) for v in values)
    if op == "neg":
        _needs_number(values[0], span)
        if known:
            return -values[0]
        return Op("neg", (args[0],), type_of(values[0]), span)
    if op == "not":
        _needs_condition(values[0], span, "`not` needs a condition")
        if known:
            return not values[0]
        inner = args[0]
        if isinstance(inner, Op) and inner.op == "not":
            return inner.args[0]
        return Op("not", (inner,), "bool", span)
    if op == "choose":
        condition, then, otherwise = args
        _needs_condition(constant(condition), span, "`if` needs a condition (a comparison)")
        if not symbolic(constant(condition)):
            return then if constant(condition) else otherwise
        if then == otherwise:
            return then
        kinds = {type_of(then), type_of(otherwise)}
        if len(kinds) == 1:
            kind = kinds.pop()
        else:
            kind = _number_type("+", sorted(kinds)) if kinds <= set(NUMBERS) else "any"
        return Op("choose", (condition, then, otherwise), kind, span)
    if op == "log2":
        _needs_number(values[0], span)
        if known:
            if values[0] <= 0:
                raise EvalError(f"log2 needs a positive value, got {values[0]}", span)
            return math.log2(values[0])
        return Op("log2", (args[0],), "float", span)
    if op == "floor":
        _needs_number(values[0], span)
        if known:
            return math.floor(values[0])
        if type_of(values[0]) == "int":
            return args[0]
        return Op("floor", (args[0],), "int", span)
    if op in ("max", "min"):
        for value in values:
            _needs_number(value, span)
        if known:
            return {"max": max, "min": min}[op](values)
        return Op(op, tuple(args), _number_type("+", [type_of(v) for v in values]), span)
    if op == "int":
        value = values[0]
        _needs_number(value, span)
        if known:
            if isinstance(value, float) and not value.is_integer():
                raise EvalError(f"{value:g} is not a whole number", span)
            return int(value)
        return args[0] if type_of(value) == "int" else Op("int", (args[0],), "int", span)
    left, right = args
    lv, rv = values
    if op in ("and", "or"):
        what = f"`{op}` joins conditions (comparisons)"
        _needs_condition(lv, span, what)
        _needs_condition(rv, span, what)
        if known:
            return (lv and rv) if op == "and" else (lv or rv)
        for side, other in ((lv, right), (rv, left)):
            if not symbolic(side):  # a known side decides, or leaves the other
                return side if side == (op == "or") else other
        return Op(op, (left, right), "bool", span)
    if op in ("==", "!="):
        if known:
            return (lv == rv) if op == "==" else (lv != rv)
        return Op(op, (left, right), "bool", span)
    _needs_number(lv, span)
    _needs_number(rv, span)
    if op in COMPARISONS:
        if known:
            return {"<": lv < rv, ">": lv > rv, "<=": lv <= rv, ">=": lv >= rv}[op]
        return Op(op, (left, right), "bool", span)
    if known:
        return _compute(op, lv, rv, span)
    return _simplified(op, left, right, span)


def _is(value, number) -> bool:
    return not isinstance(value, bool) and not symbolic(value) and value == number and (
        type(value) is type(number)
    )  # fmt: skip


def _simplified(op: str, left, right, span):
    kind = _number_type(op, [type_of(left), type_of(right)])
    if op == "*" and _is(left, 1):
        return right
    if op == "*" and _is(right, 1):
        return left
    if op in ("+", "-") and _is(right, 0):
        return left
    if op == "+" and _is(left, 0):
        return right
    if op == "//" and _is(right, 1) and type_of(left) == "int":
        return left
    if op == "//" and type_of(left) == "int" and isinstance(right, int) and right > 0:
        # (x * c) // c is x for a whole x
        if isinstance(left, Op) and left.op == "*" and _is(left.args[1], right):
            return left.args[0]
    if op == "/" and _is(right, 1) and type_of(left) == "float":
        return left
    return Op(op, (left, right), kind, span)


def substitute(value, env: Mapping[str, object]):
    """`value` with the names of `env` replaced by theirs, computed again."""
    if isinstance(value, Var):
        return env.get(value.name, value)
    if isinstance(value, Op):
        return apply(value.op, *(substitute(a, env) for a in value.args), span=value.span)
    return value


def concrete(value, env: Mapping[str, object]):
    """The constant `value` stands for once the names of `env` are known."""
    result = constant(substitute(value, env))
    if symbolic(result):
        raise EvalError(f"`{text(result)}` is not known here", getattr(result, "span", None))
    return result


# --- Python text ------------------------------------------------------------------------------

CALLS = {
    "int": "int",
    "max": "max",
    "min": "min",
    "log2": "math.log2",
    "floor": "math.floor",
}  # Python calls
LEVELS = {"choose": 0, "or": 1, "and": 2, "not": 3, **dict.fromkeys(COMPARISONS, 4), "+": 5,
          "-": 5, "*": 6, "/": 6, "//": 6, "neg": 7, "atom": 9}  # fmt: skip


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


def _level(value) -> int:
    if isinstance(value, Op):
        return 9 if value.op in CALLS else LEVELS[value.op]
    if not isinstance(value, bool) and isinstance(value, int | float) and value < 0:
        return 7
    return 9


def text(value, spell: Callable[[str], str] = str) -> str:
    """`value` as a Python expression; `spell` gives each name's spelling (`self.planes`)."""
    if isinstance(value, Var | Named):
        return spell(value.name)
    if not isinstance(value, Op):
        return literal(value)
    op, args = value.op, value.args
    if op in CALLS:
        return f"{CALLS[op]}({', '.join(text(a, spell) for a in args)})"
    level = LEVELS[op]

    def wrapped(arg, right: bool = False) -> str:
        own = _level(arg)
        # comparisons chain in Python (a < b < c): a comparison inside one keeps its parentheses
        tight = own < level or (right and own == level) or (own == level == 4)
        return f"({text(arg, spell)})" if tight else text(arg, spell)

    if op == "neg":
        return f"-{wrapped(args[0])}"
    if op == "not":
        return f"not {wrapped(args[0])}"
    if op == "choose":
        condition, then, otherwise = args
        return f"{wrapped(then, True)} if {text(condition, spell)} else {wrapped(otherwise)}"
    return f"{wrapped(args[0])} {op} {wrapped(args[1], right=True)}"


def negated(condition):
    """`not condition`, with comparisons flipped and De Morgan applied, as a person writes it:
    `stride != 1 or inplanes != outplanes` -> `stride == 1 and inplanes == outplanes`."""
    flips = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
    if isinstance(condition, Op) and condition.op in flips:
        return Op(flips[condition.op], condition.args, "bool", condition.span)
    if isinstance(condition, Op) and condition.op in ("and", "or"):
        other = "or" if condition.op == "and" else "and"
        return Op(other, tuple(negated(a) for a in condition.args), "bool", condition.span)
    return apply("not", condition)
