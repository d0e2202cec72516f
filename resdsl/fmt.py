"""`resdsl fmt`: one canonical layout for .res files, comments and meaning kept.

The formatter works on the lines and tokens of the file, not on its parsed form, so that every
comment stays where it was written. It lays a file out as the library is laid out:

- four spaces of indentation per `{ ... }` level; a `{` ends its line and a `}` starts one;
- in a `network` or `train` body, the arguments of every statement but `stage` start in one
  column, one space past the longest keyword of that body (`input    3x32x32`, `shortcut B`);
  `stage NAME: COUNT x WIDTH` keeps single spaces;
- in a definition's body (and the `if`, `after`, `before` and group bodies inside it), the kinds
  of the layers start in one column, one space past the longest `label:` of that body; unnamed
  layers, `add shortcut` and `branch` stand in that column too (in an `if` or `else` body
  without labels, in the column of the body around it, when that lies further right);
- one space between words and around operators, `=` and `x`; none before `,`, `:` and `)`, none
  after `(` and a unary `-`, one after `,` and `:`;
- a line continued after a comma goes on under the statement's first argument (a layer's kind,
  the first parameter of a definition header);
- trailing comments of one body start in one column: column 41, or two spaces past the longest
  line of that body that carries one; full-line comments take the indentation of their line;
- runs of blank lines become one; none at the start or end of a file or of a body; no trailing
  whitespace, `\\n` line endings, one final newline.

A comment's text is never changed. The result is checked before it is used: it must parse to the
same statements (spans aside) and carry the same comments, or `format_text` raises.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import syntax as s
from .diagnostics import Diagnostic, Report, Span

COMMENT_COLUMN = 40  # 0-based: trailing comments start at column 41 or further right
INDENT = 4

_TOKEN = re.compile(
    r"""(?P<ws>[\t \f]+)
      | (?P<comment>\#[^\n]*)
      | (?P<string>"[^"\n]*")
      | (?P<word>[0-9]+x[0-9]+x[0-9]+ | [0-9]+x[0-9]+ | [0-9]+(?:\.[0-9]+)?\.\.[0-9]+(?:\.[0-9]+)?
          | [0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)? | [0-9]+[eE][-+]?[0-9]+ | \.[0-9]+(?:[eE][-+]?[0-9]+)?
          | [0-9]+ | [A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|//|[<>=+\-*/(){},:])
    """,
    re.VERBOSE,
)

# Statements of a definition's body that are not layers (and so are not aligned with them).
_DEF_KEYWORDS = {"if", "check", "after", "before", "remove"}


class FormatError(Exception):
    """The text cannot be formatted: its syntax errors, or (a bug) a result that would differ."""

    def __init__(self, report: Report):
        super().__init__(report.render())
        self.report = report


def _bug(message: str) -> FormatError:
    hint = "this is a bug in resdsl fmt; the file is left as it is"
    return FormatError(Report([Diagnostic(message, hint=hint)]))


@dataclass
class _Tok:
    text: str
    line: int
    column: int  # 1-based, as Lark counts
    unary: bool = False


@dataclass
class _Piece:
    """One line of output: some tokens of a statement, and the comment after them."""

    tokens: list[_Tok]
    comment: str | None = None


@dataclass
class _Stmt:
    pieces: list[_Piece]
    depth: int = 0
    body: int = 0  # which body it lies in (0: the top level)
    blank_before: bool = False

    @property
    def tokens(self) -> list[_Tok]:
        return [t for p in self.pieces for t in p.tokens]


@dataclass
class _Body:
    kind: str  # "top", "keyword" (network, train) or "def"
    depth: int = 0
    parent: int = 0
    branch: bool = False  # the body of an `if` or its `else`
    column: int = 0  # the column the aligned part starts at, relative to the indentation
    comment_column: int = COMMENT_COLUMN
    stmts: list[_Stmt] = field(default_factory=list)


def _lex_line(line: str, number: int, unary: set[tuple[int, int]]):
    tokens: list[_Tok] = []
    comment = None
    at = 0
    while at < len(line):
        match = _TOKEN.match(line, at)
        if match is None:
            raise _bug(f"line {number}: cannot read {line[at]!r}")
        kind, text = match.lastgroup, match.group()
        if kind == "comment":
            comment = text.rstrip()
        elif kind != "ws":
            tokens.append(_Tok(text, number, at + 1, text == "-" and (number, at + 1) in unary))
        at = match.end()
    return tokens, comment


def _split_braces(tokens: list[_Tok]) -> list[list[_Tok]]:
    """A `{` ends a line and a `}` starts one (`} else {` stays together)."""
    segments: list[list[_Tok]] = [[]]
    for token in tokens:
        if token.text == "}" and segments[-1]:
            segments.append([])
        segments[-1].append(token)
        if token.text == "{":
            segments.append([])
    return [seg for seg in segments if seg] or [[]]


def _unary_minus(text: str) -> set[tuple[int, int]]:
    from .parse import parser

    tree = parser().parse(text + "\n")
    return {(t.meta.line, t.meta.column) for t in tree.iter_subtrees() if t.data == "neg"}


def _statements(text: str) -> list[_Stmt]:
    unary = _unary_minus(text)
    stmts: list[_Stmt] = []
    open_stmt: _Stmt | None = None  # a statement whose last line ended with a comma
    blank = False
    for number, line in enumerate(text.split("\n"), start=1):
        tokens, comment = _lex_line(line, number, unary)
        if open_stmt is not None:
            if tokens or comment is not None:
                open_stmt.pieces.append(_Piece(tokens, comment))
            if tokens and tokens[-1].text != ",":
                open_stmt = None
            continue
        if not tokens:
            if comment is None:
                blank = True
            else:
                stmts.append(_Stmt([_Piece([], comment)], blank_before=blank))
                blank = False
            continue
        segments = _split_braces(tokens)
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            stmt = _Stmt([_Piece(segment, comment if last else None)], blank_before=blank)
            blank = False
            stmts.append(stmt)
        if stmts[-1].tokens[-1].text == ",":
            open_stmt = stmts[-1]
    return stmts


def _assign_bodies(stmts: list[_Stmt]) -> list[_Body]:
    bodies = [_Body("top")]
    stack = [0]
    for stmt in stmts:
        tokens = stmt.tokens
        if tokens and tokens[0].text == "}":
            if len(stack) > 1:
                stack.pop()
        stmt.depth = len(stack) - 1
        stmt.body = stack[-1]
        bodies[stack[-1]].stmts.append(stmt)
        if tokens and tokens[-1].text == "{":
            if stmt.depth == 0 and tokens[0].text in ("network", "train"):
                kind = "keyword"
            else:
                kind = "def"
            branch = tokens[0].text == "if" or (len(tokens) > 1 and tokens[1].text == "else")
            bodies.append(_Body(kind, stmt.depth + 1, stmt.body, branch))
            stack.append(len(bodies) - 1)
    return bodies


def _is_layer(tokens: list[_Tok]) -> bool:
    """A layer (named or not), `add shortcut` or `branch`: the statements aligned by kind."""
    if not tokens or tokens[0].text in _DEF_KEYWORDS or tokens[0].text == "}":
        return False
    if len(tokens) > 1 and tokens[1].text == "=":  # width = ...
        return False
    if len(tokens) > 2 and tokens[1].text == ":" and tokens[2].text == "{":  # a group
        return False
    return tokens[-1].text != "{"


def _labelled(tokens: list[_Tok]) -> bool:
    return len(tokens) > 2 and tokens[1].text == ":"


def _aligned(body: _Body, tokens: list[_Tok]) -> bool:
    if not tokens:
        return False
    if body.kind == "keyword":
        return tokens[0].text not in ("stage", "}")
    if body.kind == "def":
        return _is_layer(tokens)
    return False


def _join(tokens: list[_Tok], offsets: list[int], start: int = 0, header: bool = False) -> str:
    """Tokens with the canonical spaces between them; `offsets` gets where each one starts."""
    out = ""
    previous = None
    for index, token in enumerate(tokens):
        if previous is None or token.text in (",", ")", ":") or previous.text == "(":
            sep = ""
        elif previous.unary or (header and index == 2 and token.text == "("):
            sep = ""
        elif token.text == "(" and previous.text in s.FUNCTIONS:  # a call: max(a, b)
            sep = ""
        else:
            sep = " "
        out += sep
        offsets.append(start + len(out))
        out += token.text
        previous = token
    return out


def _render_first(body: _Body, stmt: _Stmt, offsets: list[int]) -> str:
    tokens = stmt.pieces[0].tokens
    header = stmt.depth == 0 and tokens[0].text in ("block", "stem", "shortcut", "head")
    if not _aligned(body, tokens):
        return _join(tokens, offsets, header=header)
    if body.kind == "keyword":
        offsets.append(0)
        rest = _join(tokens[1:], offsets, start=body.column)
        return tokens[0].text.ljust(body.column) + rest
    if _labelled(tokens):
        label = tokens[0].text + ":"
        offsets.extend([0, len(tokens[0].text)])
        return label.ljust(body.column) + _join(tokens[2:], offsets, start=body.column)
    return " " * body.column + _join(tokens, offsets, start=body.column)


def _continuation_column(body: _Body, stmt: _Stmt, offsets: list[int]) -> int:
    tokens = stmt.pieces[0].tokens
    opened = [i for i, t in enumerate(tokens) if t.text == "("]
    closed = sum(t.text == ")" for t in tokens)
    if len(opened) > closed:  # inside the parameters of a definition header
        return offsets[opened[closed]] + 1
    if body.kind == "def" and _is_layer(tokens):
        return offsets[2] if _labelled(tokens) else offsets[0]
    if tokens[0].text == "stage":
        colon = next((i for i, t in enumerate(tokens) if t.text == ":"), None)
        if colon is not None and colon + 1 < len(tokens):
            return offsets[colon + 1]
    return offsets[1] if len(offsets) > 1 else offsets[0]


def _lay_out(bodies: list[_Body], stmts: list[_Stmt]) -> list[tuple[int, str, str | None]]:
    """(body, code, trailing comment) for every output line, the code already indented."""
    for body in bodies:
        aligned = [st.tokens for st in body.stmts if _aligned(body, st.tokens)]
        if body.kind == "keyword" and aligned:
            body.column = max(len(t[0].text) for t in aligned) + 1
        elif body.kind == "def":
            labels = [len(t[0].text) + 1 for t in aligned if _labelled(t)]
            if labels:
                body.column = max(labels) + 1
            elif body.branch and bodies[body.parent].kind == "def":  # under the outer kinds
                outer = bodies[body.parent]
                body.column = max(0, INDENT * (outer.depth - body.depth) + outer.column)
    lines: list[tuple[int, str, str | None]] = []
    first_in_body = True
    for stmt in stmts:
        body = bodies[stmt.body]
        indent = " " * (INDENT * stmt.depth)
        tokens = stmt.tokens
        closing = bool(tokens) and tokens[0].text == "}"
        if stmt.blank_before and not first_in_body and not closing and lines:
            lines.append((stmt.body, "", None))
        first_in_body = bool(tokens) and tokens[-1].text == "{"
        head = stmt.pieces[0]
        if not head.tokens:  # a comment on a line of its own
            lines.append((stmt.body, indent + head.comment, None))
            continue
        offsets: list[int] = []
        code = _render_first(body, stmt, offsets)
        lines.append((stmt.body, indent + code, head.comment))
        if len(stmt.pieces) > 1:
            column = " " * (len(indent) + _continuation_column(body, stmt, offsets))
            for piece in stmt.pieces[1:]:
                if piece.tokens:
                    lines.append((stmt.body, column + _join(piece.tokens, []), piece.comment))
                else:
                    lines.append((stmt.body, column + piece.comment, None))
    return lines


def _layout(text: str) -> str:
    stmts = _statements(text)
    bodies = _assign_bodies(stmts)
    lines = _lay_out(bodies, stmts)
    for index, body in enumerate(bodies):
        commented = [len(code) for b, code, comment in lines if b == index and comment]
        body.comment_column = max([COMMENT_COLUMN] + [n + 2 for n in commented])
    out = []
    for b, code, comment in lines:
        if comment is not None:
            code = code.ljust(bodies[b].comment_column) + comment
        out.append(code.rstrip())
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def _strip_spans(value):
    if isinstance(value, Span):
        return None
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return (type(value).__name__,) + tuple(_strip_spans(v) for v in value)
    if isinstance(value, list | tuple):
        return tuple(_strip_spans(v) for v in value)
    if isinstance(value, s.SpecFile):
        return tuple(
            _strip_spans(getattr(value, name))
            for name in ("params", "networks", "trains", "definitions")
        )
    return value


def _comments(text: str) -> list[str]:
    found = []
    for line in text.split("\n"):
        at = 0
        while at < len(line):
            match = _TOKEN.match(line, at)
            if match is None:
                break
            if match.lastgroup == "comment":
                found.append(match.group().rstrip())
            at = match.end()
    return found


def format_text(text: str, path: str = "<text>") -> str:
    """The canonical layout of `text`; `FormatError` when it does not parse."""
    from .parse import parse_text

    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    report = Report()
    before = parse_text(text, path, report)
    if before is None:
        if not report.failed:  # pragma: no cover - parse_text always says why
            report.error(f"{path}: cannot parse it")
        raise FormatError(report)
    result = _layout(text)
    after = parse_text(result, path, Report())
    if after is None or _strip_spans(after) != _strip_spans(before):
        raise _bug(f"{path}: formatting would change what the file means")
    if _comments(result) != _comments(text):
        raise _bug(f"{path}: formatting would change a comment")
    return result


def write_atomically(path: Path, text: str) -> None:
    """Replace the file's contents at once: a temporary file beside it, then `os.replace`."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
