"""Reading written values with diagnostics: numbers, whole numbers, symbols, options."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import syntax as s
from ..diagnostics import Report, Span, did_you_mean
from ..limits import MAX_WHOLE, bounded

Number = int | float


def show(value: Number) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class Values:
    """Evaluates expressions against the spec's parameters and reports what does not fit."""

    params: dict[str, Number]
    report: Report

    def evaluate(self, expr: s.Expr) -> Number | None:
        if isinstance(expr, s.Num):
            return expr.value
        if isinstance(expr, s.Ref):
            if expr.name in self.params:
                return self.params[expr.name]
            self.report.error(
                f"unknown parameter `{expr.name}`",
                expr.span,
                did_you_mean(expr.name, sorted(self.params), "parameters")
                if self.params
                else "declare it first: `param NAME = VALUE`",
            )
            return None
        if isinstance(expr, s.Neg):
            value = self.evaluate(expr.operand)
            return None if value is None else -value
        if isinstance(expr, s.Call) and expr.name in s.FUNCTIONS:
            values = [self.evaluate(arg) for arg in expr.args]
            if any(v is None for v in values):
                return None
            if expr.name == "log2":
                if values[0] <= 0:
                    self.report.error(f"log2 needs a positive value, got {show(values[0])}",
                                      expr.span)  # fmt: skip
                    return None
                return math.log2(values[0])
            if expr.name == "floor":
                return math.floor(values[0])
            return {"max": max, "min": min}[expr.name](values)
        if not isinstance(expr, s.BinOp) or expr.op not in ("+", "-", "*", "/", "//"):
            self.report.error(
                "conditions and choices are written only inside block, stem and shortcut "
                "definitions",
                expr.span,
            )
            return None
        left, right = self.evaluate(expr.left), self.evaluate(expr.right)
        if left is None or right is None:
            return None
        if expr.op in ("/", "//") and right == 0:
            self.report.error("division by zero", expr.right.span)
            return None
        result = {
            "+": lambda: left + right,
            "-": lambda: left - right,
            "/": lambda: left / right,
            "//": lambda: left // right,
            "*": lambda: left * right,
        }[expr.op]()
        return bounded(result, expr.span, self.report)

    def number(
        self,
        value: s.Value | None,
        what: str,
        *,
        span: Span,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float | None:
        if value is None or not isinstance(value, s.EXPRESSIONS):
            self.report.error(f"{what} needs a number", _span_of(value, span))
            return None
        number = self.evaluate(value)
        if number is None:
            return None
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if too_low or too_high:
            self.report.error(
                f"{what} must be {_interval(low, high, low_open, high_open)}, got {show(number)}",
                value.span,
            )
            return None
        return float(number)

    def whole(
        self,
        value: s.Value | None,
        what: str,
        *,
        span: Span,
        minimum: int = 1,
        maximum: int = MAX_WHOLE,
    ) -> int | None:
        """A whole number in [minimum, maximum] (a float with an integral value is accepted)."""
        if value is None or not isinstance(value, s.EXPRESSIONS):
            self.report.error(f"{what} needs a whole number", _span_of(value, span))
            return None
        number = self.evaluate(value)
        if number is None:
            return None
        if isinstance(number, float):
            if not number.is_integer():
                self.report.error(f"{what} must be a whole number, got {show(number)}", value.span)
                return None
            number = int(number)
        if number < minimum:
            bound = "positive" if minimum == 1 else f"at least {minimum}"
            article = "a " if minimum == 1 else ""
            self.report.error(
                f"{what} must be {article}{bound}{' whole number' if minimum == 1 else ''}, "
                f"got {number}",
                value.span,
            )
            return None
        if number > maximum:
            self.report.error(f"{what} must be at most {maximum:,}, got {number:,}", value.span)
            return None
        return number

    def symbol(
        self, value: s.Value | s.Word | None, choices: Iterable[str], what: str, *, span: Span
    ) -> str | None:
        choices = tuple(choices)
        if isinstance(value, s.Word | s.Ref):
            text = value.name if isinstance(value, s.Ref) else value.text
            if text in choices:
                return text
            close = [c for c in choices if c.lower() == text.lower()]
            hint = (
                f"did you mean `{close[0]}`? ({what}s: {', '.join(choices)})"
                if close
                else did_you_mean(text, choices, f"{what}s")
            )
            self.report.error(f"unknown {what} `{text}`", value.span, hint)
            return None
        self.report.error(
            f"{what} needs one of: {', '.join(choices)}",
            _span_of(value, span),
        )
        return None


def _span_of(value, fallback: Span) -> Span:
    return getattr(value, "span", None) or fallback


def _interval(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        return f"in {left}{show(low)}, {show(high)}{right}"
    if low is not None:
        return f"{'>' if low_open else '>='} {show(low)}"
    return f"{'<' if high_open else '<='} {show(high)}"


OptionReader = Callable[[s.Option], object]


def read_options(
    statement: s.Statement,
    readers: dict[str, OptionReader],
    report: Report,
    *,
    options: Iterable[s.Option] | None = None,
) -> dict[str, object]:
    """Apply the reader of each `, name value` option; unknown or repeated names are errors."""
    values: dict[str, object] = {}
    seen: dict[str, s.Option] = {}
    for option in statement.options if options is None else options:
        name = option.name.text
        if name in seen:
            report.error(
                f"`{name}` is given twice in `{statement.keyword}`",
                option.span,
                f"first given at line {seen[name].span.line}",
            )
            continue
        seen[name] = option
        reader = readers.get(name)
        if reader is None:
            allowed = sorted(readers)
            report.error(
                f"unknown option `{name}` for `{statement.keyword}`",
                option.name.span,
                did_you_mean(name, allowed, "options")
                if allowed
                else f"`{statement.keyword}` takes no options",
            )
            continue
        result = reader(option)
        if result is not None:
            values[name] = result
    return values


def flag(report: Report) -> OptionReader:
    """An option that is on when written: `, zero_init_residual` (or `, nesterov`)."""

    def read(option: s.Option) -> object:
        if option.value is not None:
            report.error(f"`{option.name.text}` takes no value", option.value.span)
            return None
        return True

    return read
