"""Text -> `syntax.SpecFile`: the Lark LALR parser, its error messages and recovery.

Syntax errors are collected, not raised one at a time: after an error the parser skips to the
end of the line (or past a `{ ... }` block opened on it) and goes on, so one run reports every
broken line.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import syntax as s
from .diagnostics import MAX_SHOWN, Report, Span, did_you_mean, remember_source
from .limits import MAX_MAGNITUDE, MAX_NESTING, MAX_NUMBER_DIGITS, MAX_OPERATORS

GRAMMAR = Path(__file__).with_name("grammar.lark")


NETWORK_STATEMENTS = (
    "input", "classes", "stem", "block", "shortcut", "stage", "init", "batchnorm", "norm",
    "head", "drop_path", "layout",
)  # fmt: skip
TRAIN_STATEMENTS = (
    "data", "preprocess", "augment", "optimizer", "batch", "schedule", "warmup", "length",
    "eval", "val_split", "validate", "loss", "mix", "ema", "precision", "drop_path",
)  # fmt: skip
TOP_STATEMENTS = ("param", "network", "train", "block", "stem", "shortcut", "head")

# How the parser's terminals read in a message.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "STRING": 'a quoted path ("...")',
    "SHAPE": "a shape such as 3x224x224",
    "KSIZE": "a kernel size such as 3x3",
    "RANGE": "a range such as 256..480",
    "_NL": "the end of the line",
    "_COMMA": "`,`",
    "COMPARE": "a comparison (==, !=, <, >, <=, >=)",
    "$END": "the end of the file",
}


@functools.cache
def parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,
    )


@functools.cache
def _keyword_terminals() -> dict[str, str]:
    """Terminal name -> its literal text, for the grammar's keywords and punctuation."""
    words = {}
    for terminal in parser().terminals:
        if terminal.pattern.type == "str":
            words[terminal.name] = terminal.pattern.value
    return words


def describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    literal = _keyword_terminals().get(name)
    return f"`{literal}`" if literal is not None else name.lower()


_EXPR_START = {"INT", "FLOAT", "NAME", "LPAR", "MINUS"}


def _describe_expected(expected: set[str]) -> str:
    expected = set(expected)
    if {"INT", "FLOAT", "NAME"} <= expected:
        expected -= _EXPR_START
        expected.add("a number or a parameter name")
    elif {"INT", "FLOAT"} <= expected:
        expected -= {"INT", "FLOAT"}
        expected.add("a number")
    if len(expected) > 1:  # more arithmetic is rarely what was meant
        expected -= {"PLUS", "MINUS", "STAR", "SLASH", "__ANON_0", "IF", "COMPARE"}
    words = sorted({t if " " in t else describe_terminal(t) for t in expected})
    if len(words) > 8:
        return "a statement"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _statement_keywords(expected: set[str]) -> list[str]:
    keywords = _keyword_terminals()
    allowed = set(NETWORK_STATEMENTS + TRAIN_STATEMENTS + TOP_STATEMENTS)
    return sorted(keywords[t] for t in expected if keywords.get(t) in allowed)


def _token_span(path: str, token: Token) -> Span:
    line = token.line or 1
    column = token.column or 1
    end_line = token.end_line or line
    end_column = token.end_column or column + 1
    if end_line != line:  # a newline token: point at the end of its line
        end_line, end_column = line, column + 1
    return Span(path, line, column, end_line, end_column)


def _unclosed_brace(path: str, text: str) -> Span | None:
    """The `{` that is still open at the end of the file (comments and strings skipped)."""
    opened: list[tuple[int, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        in_string = False
        for column, char in enumerate(line, start=1):
            if char == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif char == "#":
                break
            elif char == "{":
                opened.append((number, column))
            elif char == "}" and opened:
                opened.pop()
    if not opened:
        return None
    line, column = opened[-1]
    return Span(path, line, column, line, column + 1)


def _message_for_token(
    path: str, error: UnexpectedToken, text: str
) -> tuple[str, Span, str | None]:
    token = error.token
    expected = set(error.expected)
    if error.interactive_parser is not None:
        expected = error.interactive_parser.accepts() or expected
    statements = _statement_keywords(expected)
    if token.type == "$END":
        line = text.count("\n") or 1
        span = Span(path, line, 1, line, 2)
        brace = _unclosed_brace(path, text)
        if "RBRACE" in expected and brace is not None:
            return (
                f"this `{{` is never closed (the file ends at line {line})",
                brace,
                "add the closing `}` after the block's last statement",
            )
        return f"the file ends early: expected {_describe_expected(expected)}", span, None
    span = _token_span(path, token)
    if token.type == "_NL":
        return (
            f"the line ends early: expected {_describe_expected(expected)}",
            span,
            None,
        )
    if statements and token.type == "NAME":
        if "network" in statements:
            where = "at the top level"
        elif set(statements) & set(NETWORK_STATEMENTS):
            where = "in a network"
        else:
            where = "in a train section"
        return (
            f"unknown statement `{token}` {where}",
            span,
            did_you_mean(str(token), statements, "statements here"),
        )
    shown = str(token).strip() or token.type
    hint = None
    if _after_trailing_comma(text, token):
        hint = "a comma at the end of a line continues the statement on the next; remove it"
    elif token.type == "RBRACE":
        hint = "put the closing `}` on a line of its own"
    elif "X" in expected or "COLON" in expected:
        hint = "a stage is written `stage [NAME]: COUNT x WIDTH`, e.g. `stage conv2_x: 3 x 64`"
    elif token.type in {"INT", "FLOAT", "NAME"} and "_COMMA" in expected:
        hint = "options are written after a comma: `, name value`"
    return f"unexpected `{shown}`: expected {_describe_expected(expected)}", span, hint


def _after_trailing_comma(text: str, token: Token) -> bool:
    """Does a comma end the line before this token (so the statement ran on into it)?

    Looks back from the token over blank and comment lines only, so that a file of many broken
    lines costs linear time."""
    position = token.start_pos
    if position is None:
        return False
    line_start = text.rfind("\n", 0, position) + 1
    if text[line_start:position].strip():
        return False  # the token is not the first of its line
    end = line_start - 1
    while end > 0:
        start = text.rfind("\n", 0, end) + 1
        line = text[start:end].split("#")[0].rstrip()
        if line.strip():
            return line.endswith(",")
        end = start - 1
    return False


class _Recovery:
    """Lark `on_error` handler: record one error per line, then skip to a statement boundary."""

    def __init__(self, path: str, text: str, report: Report):
        self.path, self.text, self.report = path, text, report
        self.error_lines: set[int] = set()
        self.open_braces = 0
        self.starters: set[str] | None = None

    def __call__(self, error: UnexpectedInput) -> bool:
        if isinstance(error, UnexpectedCharacters):
            self._record_characters(error)
            return True
        assert isinstance(error, UnexpectedToken)
        token = error.token
        if token.type == "$END":
            if not self.error_lines:  # after an error, an unfinished block is its echo
                self._record_token(error)
            return False
        if self.open_braces == 0:  # inside a block whose header was broken, stay quiet
            self._record_token(error)
        if token.type == "LBRACE":
            self.open_braces += 1
        elif token.type == "RBRACE" and self.open_braces:
            self.open_braces -= 1
            self.error_lines.add(token.line)  # the skipped block ends quietly
        if token.type == "_NL" and self.open_braces == 0:
            self._unwind(error.interactive_parser)
        return True

    def _record_characters(self, error: UnexpectedCharacters) -> None:
        if error.line in self.error_lines:
            return
        self.error_lines.add(error.line)
        char = self.text[error.pos_in_stream] if error.pos_in_stream < len(self.text) else "?"
        span = Span(self.path, error.line, error.column, error.line, error.column + 1)
        hint = None
        if char == "'":
            hint = 'paths are written in double quotes: "path/to/file"'
        elif char in ".%^":
            hint = "only +, -, *, / and // are allowed in numbers and widths"
        self.report.error(f"unexpected character `{char}`", span, hint)

    def _record_token(self, error: UnexpectedToken) -> None:
        line = error.token.line or 0
        if error.token.type != "$END" and line in self.error_lines:
            return
        self.error_lines.add(line)
        if len(self.error_lines) > MAX_SHOWN:  # past the page that is printed: counted, cheaply
            self.report.error("a syntax error", _token_span(self.path, error.token))
            return
        self.report.error(*_message_for_token(self.path, error, self.text))

    def _unwind(self, interactive) -> None:
        """Pop the half-parsed statement off the stack so the next line can start afresh."""
        state = interactive.parser_state
        table = state.parse_conf.states
        if self.starters is None:
            keywords = _keyword_terminals()
            statements = set(NETWORK_STATEMENTS + TRAIN_STATEMENTS + TOP_STATEMENTS)
            self.starters = {t for t, text in keywords.items() if text in statements}
            self.starters.add("RBRACE")
        while len(state.state_stack) > 1 and not self._at_boundary(set(table[state.position])):
            state.state_stack.pop()
            state.value_stack.pop()

    def _at_boundary(self, acceptable: set[str]) -> bool:
        """A statement can start here: a keyword of one, or (in a definition) a layer's name."""
        return bool(self.starters & acceptable) or {"NAME", "RBRACE"} <= acceptable


def _span(path: str, meta) -> Span:
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


def _end_of(node) -> tuple[int, int]:
    if isinstance(node, Token):
        return node.end_line, node.end_column
    return node.span.end_line, node.span.end_column


class _ToSyntax(Transformer):
    """Lark tree -> `syntax` nodes. Statement spans end at their last written token."""

    def __init__(self, path: str, report: Report, text: str = ""):
        super().__init__()
        self.path, self.report = path, report
        self.lines = text.split("\n")

    def _stmt_span(self, meta, children) -> Span:
        start = _span(self.path, meta)
        kept = [c for c in children if c is not None]
        if not kept:
            return start
        end_line, end_column = _end_of(kept[-1])
        return Span(self.path, start.line, start.column, end_line, end_column)

    def _word(self, token: Token) -> s.Word:
        return s.Word(str(token), _token_span(self.path, token))

    # values -------------------------------------------------------------------------------
    @v_args(meta=True)
    def number(self, meta, children):
        (token,) = children
        text = str(token)
        span = _span(self.path, meta)
        if len(text) > MAX_NUMBER_DIGITS:
            self.report.error(
                f"a number of {len(text):,} digits is too long (at most {MAX_NUMBER_DIGITS})",
                span,
            )
            return s.Num(0, span)
        value = int(text) if token.type == "INT" else float(text)
        if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
            self.report.error(f"{text} is too large (at most {MAX_MAGNITUDE:.0e})", span)
            return s.Num(0, span)
        return s.Num(value, span)

    @v_args(meta=True)
    def ref(self, meta, children):
        return s.Ref(str(children[0]), _span(self.path, meta))

    def _binop(op):
        @v_args(meta=True)
        def build(self, meta, children):
            left, right = children
            return s.BinOp(op, left, right, _span(self.path, meta))

        return build

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, floordiv, or_, and_ = _binop("/"), _binop("//"), _binop("or"), _binop("and")

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return s.BinOp(str(op), left, right, _span(self.path, meta))

    @v_args(meta=True)
    def neg(self, meta, children):
        return s.Neg(children[0], _span(self.path, meta))

    @v_args(meta=True)
    def call(self, meta, children):
        name, *args = children
        span = _span(self.path, meta)
        if str(name) not in s.FUNCTIONS:
            self.report.error(
                f"unknown function `{name}`",
                _token_span(self.path, name),
                "values may call `max(a, b, ...)`, `min(a, b, ...)` and `log2(a)`",
            )
        elif s.FUNCTIONS[str(name)] is None and len(args) < 2:
            self.report.error(f"`{name}` needs two values or more", span, f"write `{name}(a, b)`")
        elif s.FUNCTIONS[str(name)] not in (None, len(args)):
            self.report.error(f"`{name}` takes one value", span, f"write `{name}(a)`")
        return s.Call(str(name), tuple(args), span)

    @v_args(meta=True)
    def not_(self, meta, children):
        return s.Not(children[0], _span(self.path, meta))

    @v_args(meta=True)
    def choose(self, meta, children):
        then, condition, otherwise = children
        return s.Choose(then, condition, otherwise, _span(self.path, meta))

    def _terminal(self, token: Token):
        span = _token_span(self.path, token)
        if token.type in {"SHAPE", "KSIZE", "RANGE"} and any(
            len(part) > MAX_NUMBER_DIGITS for part in str(token).replace("..", "x").split("x")
        ):
            self.report.error(f"a size in `{str(token)[:40]}...` is too long", span)
            token = Token(token.type, "1x1x1" if token.type == "SHAPE" else "1x1" if
                          token.type == "KSIZE" else "1..1")  # fmt: skip
        if token.type in {"SHAPE", "KSIZE"}:
            return s.Dims(tuple(int(v) for v in str(token).split("x")), span)
        if token.type == "RANGE":
            low, high = (float(v) if "." in v else int(v) for v in str(token).split(".."))
            return s.Range(low, high, span)
        if token.type == "STRING":
            return s.Str(str(token)[1:-1], span)
        return token

    SHAPE = KSIZE = RANGE = STRING = _terminal

    @v_args(meta=True)
    def option(self, meta, children):
        name = self._word(children[0])
        value = children[1] if len(children) > 1 else None
        return s.Option(name, value, self._stmt_span(meta, children))

    @v_args(meta=True)
    def option_values(self, meta, children):
        name = self._word(children[0])
        span = self._stmt_span(meta, children)
        values = s.Several(tuple(children[1:]), Span(
            span.path, children[1].span.line, children[1].span.column,
            children[-1].span.end_line, children[-1].span.end_column,
        ))  # fmt: skip
        return s.Option(name, values, span)

    @v_args(meta=True)
    def point(self, meta, children):
        """`0.25: 1` of a piecewise schedule: (fraction of the length, factor of the lr)."""
        at, factor = children
        return s.Several((at, factor), _span(self.path, meta))

    @v_args(meta=True)
    def step(self, meta, children):
        name = self._word(children[0])
        return s.Step(name, tuple(children[1:]), self._stmt_span(meta, children))

    # statements -------------------------------------------------------------------------------
    def _statement(keyword, form=None):
        @v_args(meta=True)
        def build(self, meta, children):
            label = None
            args, options = [], []
            for child in children:
                if isinstance(child, s.Option):
                    options.append(child)
                elif isinstance(child, Token):
                    word = self._word(child)
                    if keyword == "stage" and not args:
                        label = word
                    else:
                        args.append(word)
                else:
                    args.append(child)
            return s.Statement(
                keyword,
                self._stmt_span(meta, children),
                tuple(args),
                tuple(options),
                label,
                form,
            )

        return build

    input = _statement("input")
    classes = _statement("classes")
    stem = _statement("stem")
    block = _statement("block")
    shortcut = _statement("shortcut")
    stage = _statement("stage")
    init = _statement("init")
    batchnorm = _statement("batchnorm")
    norm = _statement("norm")
    head = _statement("head")
    data = _statement("data")
    preprocess = _statement("preprocess")
    augment = _statement("augment")
    eval = _statement("eval")
    optimizer = _statement("optimizer")
    batch = _statement("batch")
    schedule_at = _statement("schedule", "at")
    schedule_plateau = _statement("schedule", "on_plateau")
    schedule_constant = _statement("schedule", "constant")
    warmup_until = _statement("warmup", "until")
    warmup_for = _statement("warmup", "for")
    warmup_linear = _statement("warmup", "linear")
    schedule_cosine = _statement("schedule", "cosine")
    schedule_piecewise = _statement("schedule", "piecewise")
    loss = _statement("loss")
    mix = _statement("mix")
    ema = _statement("ema")
    precision = _statement("precision")
    length = _statement("length")
    val_split = _statement("val_split")
    validate = _statement("validate")

    drop_path = _statement("drop_path")
    layout = _statement("layout")

    # definitions ------------------------------------------------------------------------------
    @v_args(meta=True)
    def layer(self, meta, children):
        tokens = [c for c in children if isinstance(c, Token)]
        label = self._word(tokens[0]) if len(tokens) == 2 else None
        kind = self._word(tokens[-1])
        kernel = next((c for c in children if isinstance(c, s.Dims)), None)
        rest = [c for c in children if not isinstance(c, Token | s.Dims | s.Option)]
        options = tuple(c for c in children if isinstance(c, s.Option))
        arg = rest[0] if rest else None
        return s.Layer(label, kind, kernel, arg, options, self._stmt_span(meta, children))

    @v_args(meta=True)
    def group(self, meta, children):
        label, body = children
        return s.Group(self._word(label), tuple(body), _span(self.path, meta))

    @v_args(meta=True)
    def let(self, meta, children):
        name, value = children
        return s.Let(self._word(name), value, self._stmt_span(meta, children))

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        condition, then, *otherwise = children
        return s.If(
            condition, tuple(then), tuple(otherwise[0]) if otherwise else None,
            _span(self.path, meta),
        )  # fmt: skip

    @v_args(meta=True)
    def add_shortcut(self, meta, children):
        (name,) = children
        return s.Add(self._word(name), _span(self.path, meta))

    @v_args(meta=True)
    def each(self, meta, children):
        name, body = children
        return s.Each(self._word(name), tuple(body), _span(self.path, meta))

    @v_args(meta=True)
    def branch(self, meta, children):
        return s.Branch(self._keyword_span(meta, "branch"))

    def _keyword_span(self, meta, text: str) -> Span:
        return Span(self.path, meta.line, meta.column, meta.line, meta.column + len(text))

    def _insert(where):
        @v_args(meta=True)
        def build(self, meta, children):
            anchor, body = children
            return s.Insert(where, self._word(anchor), tuple(body), _span(self.path, meta))

        return build

    after, before = _insert("after"), _insert("before")

    @v_args(meta=True)
    def check(self, meta, children):
        condition, message = children
        return s.Check(condition, message, self._stmt_span(meta, children))

    @v_args(meta=True)
    def remove(self, meta, children):
        return s.Remove(self._word(children[0]), self._stmt_span(meta, children))

    def def_body(self, children):
        return list(children)

    @v_args(meta=True)
    def def_param(self, meta, children):
        default = children[1] if len(children) > 1 else None
        return s.DefParam(self._word(children[0]), default, self._stmt_span(meta, children))

    def def_params(self, children):
        return tuple(c for c in children if c is not None)

    def def_extends(self, children):
        return self._word(children[0])

    def _definition(kind):
        @v_args(meta=True)
        def build(self, meta, children):
            name, params, *rest = children
            extends = next((c for c in rest if isinstance(c, s.Word)), None)
            body = next(c for c in rest if isinstance(c, list))
            span = self._header_span(meta, name)
            return s.Definition(kind, self._word(name), params, extends, tuple(body), span,
                                self._comment_above(meta.line))  # fmt: skip

        return build

    block_def, stem_def, shortcut_def, head_def = (
        _definition("block"), _definition("stem"), _definition("shortcut"), _definition("head")
    )  # fmt: skip

    # declarations -------------------------------------------------------------------------------
    @v_args(meta=True)
    def param(self, meta, children):
        name, value = children
        return s.ParamDecl(self._word(name), value, self._stmt_span(meta, children))

    def extends(self, children):
        return children[0]

    def body(self, children):
        return list(children)

    train_body = body

    @v_args(meta=True)
    def network(self, meta, children):
        name = self._word(children[0])
        extends = next((c for c in children[1:] if isinstance(c, s.Str)), None)
        body = next((c for c in children[1:] if isinstance(c, list)), [])
        return s.NetworkDecl(name, extends, tuple(body), self._header_span(meta, children[0]))

    @v_args(meta=True)
    def train(self, meta, children):
        recipe = next((self._word(c) for c in children if isinstance(c, Token)), None)
        body = next((tuple(c) for c in children if isinstance(c, list)), None)
        last = recipe.span if recipe else None
        span = _span(self.path, meta)
        end = last or span
        head = Span(self.path, span.line, span.column, end.line, end.end_column)
        if last is None:
            head = Span(self.path, span.line, span.column, span.line, span.column + len("train"))
        return s.TrainDecl(recipe, body, head)

    def _comment_above(self, line: int) -> str:
        """The comment lines right above line `line`, without their `#`: a definition's doc."""
        found = []
        for text in reversed(self.lines[: line - 1]):
            stripped = text.strip()
            if not stripped.startswith("#"):
                break
            found.append(stripped.lstrip("#").strip())
        return " ".join(reversed(found))

    def _header_span(self, meta, name: Token) -> Span:
        """`network NAME`: the part of a declaration that a message points at."""
        return Span(self.path, meta.line, meta.column, name.end_line, name.end_column)

    def start(self, children):
        spec = s.SpecFile(self.path)
        for child in children:
            if isinstance(child, s.ParamDecl):
                spec.params.append(child)
            elif isinstance(child, s.NetworkDecl):
                spec.networks.append(child)
            elif isinstance(child, s.TrainDecl):
                spec.trains.append(child)
            elif isinstance(child, s.Definition):
                spec.definitions.append(child)
        return spec


def _too_complex(text: str, path: str, report: Report) -> bool:
    """Refuse lines whose expressions nest deeper than the parser's tree can be walked."""
    found = False
    depth = 0
    for number, line in enumerate(text.split("\n"), start=1):
        code = line.split("#", 1)[0]
        depth += code.count("{") - code.count("}")
        if depth > MAX_NESTING:
            report.error(
                f"blocks nest {depth} deep here; resdsl takes at most {MAX_NESTING}",
                Span(path, number, 1, number, 2),
                "flatten the `if`s: a condition may join comparisons with `and` and `or`",
            )
            return True
        operators = sum(code.count(c) for c in "+-*/(")
        if operators > MAX_OPERATORS:
            report.error(
                f"this line has {operators:,} operators; resdsl takes at most {MAX_OPERATORS} "
                "in one statement",
                Span(path, number, 1, number, 2),
                "compute the value in steps: `param a = ...`, then `param b = a * ...`",
            )
            found = True
    return found


def parse_text(text: str, path: str, report: Report) -> s.SpecFile | None:
    """Parse one file's text; syntax errors go to `report` (and `None` comes back)."""
    remember_source(path, text)
    before = len(report.diagnostics)
    if _too_complex(text, path, report):
        return None
    recovery = _Recovery(path, text, report)
    try:
        tree = parser().parse(text + "\n", on_error=recovery)
    except UnexpectedEOF as error:  # pragma: no cover - the LALR parser reports $END as a token
        report.error(f"the file ends early: expected {_describe_expected(set(error.expected))}")
        return None
    except UnexpectedInput:
        return None
    if len(report.diagnostics) > before or not isinstance(tree, Tree):
        return None
    spec = _ToSyntax(path, report, text).transform(tree)
    return None if len(report.diagnostics) > before else spec
