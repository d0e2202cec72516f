"""Definitions of blocks, stems and shortcuts: collected from the prelude and the spec's files,
flattened (`extends` applied), and the evaluation of the values written inside them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import NamedTuple

from . import syntax as s
from .diagnostics import Report, Span, did_you_mean
from .layers import KINDS

PRELUDE = Path(__file__).with_name("prelude.res")


class FlatDef(NamedTuple):
    """A definition with `extends` applied: every parameter, and the body to run."""

    kind: str  # block | stem | shortcut
    name: str
    params: tuple[s.DefParam, ...]
    body: tuple
    span: Span
    doc: str = ""  # the comment right above its definition

    def param_names(self) -> list[str]:
        return [p.name.text for p in self.params]


class Definitions:
    """The blocks, stems and shortcuts a spec can use, by name."""

    def __init__(self) -> None:
        self.blocks: dict[str, FlatDef] = {}
        self.stems: dict[str, FlatDef] = {}
        self.shortcuts: dict[str, FlatDef] = {}
        self.heads: dict[str, FlatDef] = {}
        # definitions with a mistake already reported: a network that uses one says nothing more
        self.broken: set[tuple[str, str]] = set()
        self.generic_forms: dict[str, object] = {}  # interpret.Interpreter.generic's, by block

    def table(self, kind: str) -> dict[str, FlatDef]:
        return {"block": self.blocks, "stem": self.stems, "shortcut": self.shortcuts,
                "head": self.heads}[kind]  # fmt: skip

    def names(self, kind: str) -> list[str]:
        names = list(self.table(kind))
        return names + ["none"] if kind == "shortcut" else names

    def unknown_hint(self, kind: str, name: str) -> str:
        """For `block botleneck`: a close name, and how to define a new one."""
        names = self.names(kind)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        same = [n for n in names if n.lower() == name.lower()]
        head = "(outplanes, stride)" if kind == "shortcut" else (
            "(planes, stride = 1)" if kind == "block" else "(width = 64)"
        )  # fmt: skip
        define = (
            f"define a new one with `{kind} {name}{head} {{ ... }}` (docs/language.md, "
            '"Defining blocks")'
        )
        if same or close:
            return (
                f"did you mean `{(same or close)[0]}`? ({kind}s: {', '.join(names)}); or " + define
            )
        return f"{kind}s: {', '.join(names)}; or " + define

    def layer_hint(self, name: str) -> str:
        names = sorted(KINDS) + sorted(self.blocks)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            return did_you_mean(name, names, "layers")
        return (
            f"layers: {', '.join(sorted(KINDS))}, or a block; a new kind of primitive layer is "
            "added in resdsl/layers.py (docs/adding-a-layer.md)"
        )


def collect(files: list[s.SpecFile], report: Report) -> Definitions:
    """Every definition of `files` (the prelude first), flattened; problems go to `report`."""
    raw: dict[tuple[str, str], s.Definition] = {}
    for spec in files:
        for definition in spec.definitions:
            key = (definition.kind, definition.name.text)
            first = raw.get(key)
            if first is not None:
                where = "the prelude" if first.span.path.endswith("prelude.res") else (
                    f"{first.span.path}:{first.span.line}"
                )  # fmt: skip
                report.error(
                    f"{definition.kind} `{definition.name.text}` is already defined in {where}",
                    definition.name.span,
                    "choose another name (a definition can build on it with `extends`)",
                )
                continue
            raw[key] = definition
    result = Definitions()
    flattening: list[tuple[str, str]] = []

    def flat(key: tuple[str, str]) -> FlatDef | None:
        table = result.table(key[0])
        if key[1] in table:
            return table[key[1]]
        definition = raw[key]
        if definition.extends is None:
            made = FlatDef(definition.kind, definition.name.text, definition.params,
                           definition.body, definition.span, definition.doc)  # fmt: skip
        else:
            parent_key = (definition.kind, definition.extends.text)
            if parent_key not in raw:
                report.error(
                    f"{definition.kind} `{definition.name.text}` extends an unknown "
                    f"{definition.kind} `{definition.extends.text}`",
                    definition.extends.span,
                    did_you_mean(
                        definition.extends.text,
                        sorted(n for k, n in raw if k == definition.kind),
                        f"{definition.kind}s",
                    ),
                )
                return None
            if parent_key in flattening:
                report.error(
                    f"`extends` makes a cycle: {definition.kind} `{definition.name.text}`",
                    definition.extends.span,
                )
                return None
            flattening.append(key)
            parent = flat(parent_key)
            flattening.pop()
            if parent is None:
                return None
            made = _extend(parent, definition, report)
            if made is None:
                return None
        table[key[1]] = made
        return made

    for key in raw:
        if flat(key) is None:
            result.broken.add(key)
    return result


def _extend(parent: FlatDef, child: s.Definition, report: Report) -> FlatDef | None:
    params = {p.name.text: p for p in parent.params}
    for param in child.params:
        params[param.name.text] = param  # a new default, or a new parameter
    body = list(parent.body)
    lets = []
    for st in child.body:
        if isinstance(st, s.Let):
            lets.append(st)
        elif isinstance(st, s.Insert):
            body, found = _insert(body, st)
            if not found:
                report.error(
                    f"`{st.where} {st.anchor.text}`: {parent.kind} `{parent.name}` has no layer "
                    f"`{st.anchor.text}`",
                    st.anchor.span,
                    f"its layers: {', '.join(_labels(parent.body)) or '(none named)'}",
                )
                return None
        elif isinstance(st, s.Remove):
            body, found = _remove(body, st.name.text)
            if not found:
                report.error(
                    f"`remove {st.name.text}`: {parent.kind} `{parent.name}` has no "
                    f"{'add' if st.name.text == 'add' else 'layer `' + st.name.text + '`'}",
                    st.name.span,
                    f"its layers: {', '.join(_labels(parent.body)) or '(none named)'}",
                )
                return None
        else:
            report.error(
                f"a {parent.kind} that extends another changes it with `after NAME {{ ... }}`, "
                "`before NAME { ... }`, `remove NAME` or `NAME = VALUE`",
                st.span,
                "to write every layer yourself, define it without `extends`",
            )
            return None
    return FlatDef(parent.kind, child.name.text, tuple(params.values()),
                   tuple(lets) + tuple(body), child.span, child.doc)  # fmt: skip


def _labels(body) -> list[str]:
    names = []
    for st in body:
        if isinstance(st, s.Layer | s.Group) and st.label is not None:
            names.append(st.label.text)
        elif isinstance(st, s.If):
            names += _labels(st.then) + _labels(st.otherwise or ())
        elif isinstance(st, s.Each):
            names += _labels(st.body)
    return names


def _insert(body: list, st: s.Insert) -> tuple[list, bool]:
    out, found = [], False
    for item in body:
        here = isinstance(item, s.Layer | s.Group) and item.label and item.label.text == (
            st.anchor.text
        )  # fmt: skip
        if isinstance(item, s.If):
            then, a = _insert(list(item.then), st)
            otherwise, b = _insert(list(item.otherwise or ()), st)
            item = item._replace(then=tuple(then),
                                 otherwise=tuple(otherwise) if item.otherwise else None)  # fmt: skip
            found = found or a or b
        if here and st.where == "before":
            out += st.body
        out.append(item)
        if here and st.where == "after":
            out += st.body
        found = found or bool(here)
    return out, found


def _remove(body: list, name: str) -> tuple[list, bool]:
    out, found = [], False
    for item in body:
        if name == "add" and (isinstance(item, s.Branch) or isinstance(item, s.Add)
                              and item.shortcut):  # fmt: skip
            found = found or isinstance(item, s.Add)
            continue
        if isinstance(item, s.Layer | s.Group) and item.label and item.label.text == name:
            found = True
            continue
        if isinstance(item, s.If):
            then, a = _remove(list(item.then), name)
            otherwise, b = _remove(list(item.otherwise or ()), name)
            item = item._replace(then=tuple(then),
                                 otherwise=tuple(otherwise) if item.otherwise else None)  # fmt: skip
            found = found or a or b
        out.append(item)
    return out, found


def preact_block(definition: FlatDef) -> bool:
    """A pre-activation block: its first layer is a batchnorm (He et al. 2016)."""
    for st in definition.body:
        if isinstance(st, s.Layer):
            return st.kind.text == "batchnorm"
        if isinstance(st, s.Group | s.If):
            return False
    return False
