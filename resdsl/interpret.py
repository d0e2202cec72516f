"""The one interpreter of definitions: a block's, stem's or shortcut's body -> its form.

`Interpreter.run` executes a body once for a set of parameter values, which may be symbolic
(`symbolic.py`): `NAME = value` binds a value (a local of the generated code when it depends on
constructor arguments), an `if` on a known condition is decided and one on a symbolic condition
becomes a `WhenNode`, a layer's arguments are read, checked against its kind (`layers.KINDS`) and
completed, a block used as a layer becomes a `CallNode` whose channels come from that block's own
form. No other module reads the statements of a body.

Two uses: a definition on its own (`generic`: every parameter symbolic), which finds every
mistake that does not depend on the network, at the statement, and gives a block used as a layer
its channels; and a class (`lower.py`), with the values its blocks share folded in.
"""

from __future__ import annotations

from typing import NamedTuple

from . import syntax as s
from .definitions import Definitions, FlatDef
from .diagnostics import Report, Span, did_you_mean
from .forms import (
    AddNode,
    BranchNode,
    CallNode,
    CheckNode,
    EachNode,
    Form,
    GroupNode,
    KeepNode,
    LayerNode,
    LetNode,
    WhenNode,
    walk,
)
from .layers import KINDS, LayerError, complete, through, vanishes
from .limits import MAX_DEFINITION_NESTING, MAX_SPATIAL
from .names import Namespace, label_problem, value_problem
from .symbolic import (
    EvalError,
    Named,
    Op,
    Sym,
    Var,
    apply,
    constant,
    substitute,
    symbolic,
    text,
    type_of,
)

# Attribute names of layers no one named (parameter-free ones are shared, as torchvision's relu).
DEFAULT_ATTRS = {"max_pool": "maxpool", "avg_pool": "avgpool", "global_avg_pool": "pool"}
_BUSY = object()  # a definition being interpreted: meeting it again is a cycle


class Where(NamedTuple):
    """Where an interpretation's problems go: at the statement itself (`span` None: a definition
    checked on its own), or at the network's statement that chose the definition, naming it."""

    report: Report
    span: Span | None = None
    context: str = ""  # "stage conv3_x, block 1: "


class _State:
    """What running a body has built so far on one path."""

    def __init__(self, env: dict, channels, inplanes) -> None:
        self.env, self.channels, self.inplanes = env, channels, inplanes
        self.labels: set[str] = set()  # layer names, and the values bound, on this path
        self.bound: set[str] = set()
        self.added = self.branched = False
        self.lets: dict = {}  # a local -> what it holds, in terms of the parameters
        self.parts = None  # the number of parts of a split value (None: not split)
        self.kept: dict = {}  # `keep NAME` -> (channels, parts)
        self.each = False  # inside an `each`

    def copy(self) -> _State:
        other = _State(dict(self.env), self.channels, self.inplanes)
        other.labels, other.bound = set(self.labels), set(self.bound)
        other.added, other.branched, other.lets = self.added, self.branched, dict(self.lets)
        other.parts, other.kept, other.each = self.parts, dict(self.kept), self.each
        return other


class Interpreter:
    def __init__(self, definitions: Definitions, report: Report, norm=None) -> None:
        """`norm`: the network's `norm groupnorm G` (an ir.Norm), which every `batchnorm` layer
        becomes; None or BN leaves them batch normalisation."""
        self.definitions, self.report = definitions, report
        self.norm = norm if norm is not None and norm.kind != "batchnorm" else None
        # shared: each is interpreted once (a network's own norm makes forms of its own)
        self.generic_forms = definitions.generic_forms if self.norm is None else {}
        self.stack: list[str] = []

    def normalised(self, kind, args: dict):
        """A `batchnorm` is the network's norm: `norm groupnorm G` makes it a groupnorm."""
        if kind.name != "batchnorm" or self.norm is None:
            return kind, args
        kind = KINDS["groupnorm"]
        given = {"groups": self.norm.groups, "eps": self.norm.eps, "zero_init": args["zero_init"]}
        return kind, complete(kind, given)

    # --- entry points ----------------------------------------------------------------------------
    def generic(self, name: str) -> Form | None:
        """Block `name` with every parameter symbolic, interpreted once; its mistakes are reported
        at its statements. None when it has one."""
        found = self.generic_forms.get(name)
        if found is _BUSY:
            return None
        if name in self.generic_forms:
            return found
        definition = self.definitions.blocks[name]
        self.generic_forms[name] = _BUSY
        given = {p.name.text: Var(p.name.text) for p in definition.params}
        form = self.run(definition, given, Var("inplanes"), Var("preact", "bool"), Where(
            self.report))  # fmt: skip
        self.generic_forms[name] = form
        return form

    def check_definition(self, definition: FlatDef) -> bool:
        """A definition of a spec on its own: every mistake that does not depend on the network."""
        if definition.kind == "block":
            return self.generic(definition.name) is not None
        given = {p.name.text: Var(p.name.text) for p in definition.params}
        if definition.kind == "shortcut":
            given |= {"outplanes": Var("outplanes", "int"), "stride": Var("stride", "int")}
        form = self.run(definition, given, Var("inplanes"), Var("preact", "bool"), Where(
            self.report))  # fmt: skip
        return form is not None

    def run(self, definition: FlatDef, given: dict, inplanes, preact, where: Where,
            named: frozenset[str] = frozenset()) -> Form | None:  # fmt: skip
        """`definition`'s form for parameter values `given` (the others take their defaults);
        `named` parameters and values that are constants are printed by name (`expansion`)."""
        self.stack.append(definition.name)
        try:
            return _Run(self, definition, where, named).form(given, inplanes, preact)
        finally:
            self.stack.pop()

    def defaults(self, definition: FlatDef) -> dict:
        """The parameters whose default is a constant (a Python default), and that constant."""
        env = {p.name.text: Var(p.name.text) for p in definition.params}
        env |= {"inplanes": Var("inplanes"), "preact": Var("preact", "bool")}
        found = {}
        for param in definition.params:
            if param.default is None:
                continue
            try:
                value = _Run(self, definition, Where(Report()), frozenset())._value(
                    param.default, env)  # fmt: skip
            except EvalError:
                continue
            if not symbolic(value):
                found[param.name.text] = value
        return found

    def bind(self, definition: FlatDef, given: dict, inplanes, preact, where: Where,
             named: frozenset[str] = frozenset()) -> dict | None:  # fmt: skip
        """Every parameter's value: the one given, or its default (which may use the ones
        before it and `inplanes`)."""
        return _Run(self, definition, where, named).bind(given, inplanes, preact)


class _Run:
    """One interpretation of one definition."""

    def __init__(self, interpreter: Interpreter, definition: FlatDef, where: Where, named):
        self.interpreter, self.definition, self.where = interpreter, definition, where
        self.definitions = interpreter.definitions
        self.named = named
        self.failed = False
        self.calls: list[CallNode] = []

    # --- problems --------------------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None, at=None, span: Span | None = None):
        """At `span` (or the statement `at`) when checking the definition on its own; else at
        the network's statement, naming the definition and the layer."""
        self.failed = True
        where = self.where
        if where.span is None:
            where.report.error(message, span or (at.span if at is not None else
                                                 self.definition.span), hint)  # fmt: skip
            return
        text = f"{self.definition.kind} `{self.definition.name}`"
        if at is not None and isinstance(at, s.Layer | s.Group):
            kind = at.kind.text if isinstance(at, s.Layer) else "group"
            label = f" `{at.label.text}`" if at.label is not None else ""
            text += f", {kind}{label} ({place(at.span)})"
        elif at is not None:
            text += f" ({place(at.span)})"
        where.report.error(f"{where.context}{text}: {message}", where.span, hint)

    def value(self, expr, state: _State):
        """The value of a written expression (None after reporting why it has none)."""
        try:
            return self._value(expr, state.env)
        except EvalError as problem:
            hint = problem.hint
            if problem.message.startswith("unknown name"):
                known = sorted(k for k, v in state.env.items() if type_of(v) in ("int", "float"))
                hint = did_you_mean(problem.message.split("`")[1], known, "names here")
            self.error(problem.message, hint, span=problem.span or expr.span)
            return None

    def _value(self, expr, env: dict):
        if isinstance(expr, s.Num):
            return expr.value
        if isinstance(expr, s.Dims):
            return expr.values
        if isinstance(expr, s.Str):
            return Sym(expr.value)
        if isinstance(expr, s.Ref):
            return env[expr.name] if expr.name in env else Sym(expr.name)
        if isinstance(expr, s.Neg | s.Not):
            return apply("neg" if isinstance(expr, s.Neg) else "not",
                         self._value(expr.operand, env), span=expr.span)  # fmt: skip
        if isinstance(expr, s.Call):
            return apply(expr.name, *(self._value(a, env) for a in expr.args), span=expr.span)
        if isinstance(expr, s.Choose):
            condition = self._value(expr.condition, env)
            decided = constant(condition)
            if isinstance(decided, bool):  # only the chosen side is computed
                return self._value(expr.then if decided else expr.otherwise, env)
            return apply("choose", condition, self._value(expr.then, env),
                         self._value(expr.otherwise, env), span=expr.span)  # fmt: skip
        left = self._value(expr.left, env)
        if expr.op in ("and", "or") and isinstance(constant(left), bool):
            if constant(left) == (expr.op == "or"):  # decided by the left side
                return left
        return apply(expr.op, left, self._value(expr.right, env), span=expr.span)

    # --- parameters ------------------------------------------------------------------------------
    def bind(self, given: dict, inplanes, preact) -> dict | None:
        env = {"inplanes": inplanes, "preact": preact}
        state = _State(env, inplanes, inplanes)
        for param in self.definition.params:
            name = param.name.text
            problem = value_problem(name)
            if problem:
                self.error(f"{problem}; choose another name for this parameter",
                           span=param.name.span)  # fmt: skip
                continue
            if name in given:
                value = given[name]
            elif param.default is not None:
                value = self.value(param.default, state)
                if value is None:
                    continue
            else:
                self.error(
                    f"{self.definition.kind} `{self.definition.name}` needs a value for `{name}`",
                    f"give it: `, {name} VALUE`",
                )
                continue
            env[name] = self._named(name, value)
        return None if self.failed else env

    def _named(self, name: str, value):
        if name in self.named and not symbolic(value) and isinstance(value, int):
            return Named(name, value)
        return value

    # --- the body --------------------------------------------------------------------------------
    def form(self, given: dict, inplanes, preact) -> Form | None:
        env = self.bind(given, inplanes, preact)
        if env is None:
            return None
        params = {p.name.text: env[p.name.text] for p in self.definition.params}
        state = _State(env, inplanes, inplanes)
        nodes: list = []
        self.statements(self.definition.body, state, nodes)
        if self.failed:
            return None
        nodes = _named_layers(nodes, "block" if self.definition.kind == "block" else (
            "network" if self.definition.kind in ("stem", "head") else "shortcut"))  # fmt: skip
        return Form(self.definition, params, tuple(nodes), inplanes, state.channels,
                    state.lets, tuple(n for n in walk(nodes) if isinstance(n, CallNode)),
                    state.parts)  # fmt: skip

    def statements(self, body, state: _State, nodes: list, group: bool = False) -> None:
        for st in body:
            if isinstance(st, s.Let):
                self.let(st, state, nodes)
            elif isinstance(st, s.If):
                self.if_(st, state, nodes, group)
            elif isinstance(st, s.Layer) and st.kind.text == "keep":
                self.keep(st, state, nodes)
            elif isinstance(st, s.Add) and not st.shortcut:
                layer = s.Layer(None, s.Word("add", st.span), None, s.Ref(st.value.text,
                                st.value.span), (), st.span)  # fmt: skip
                self.statements((layer,), state, nodes, group)
            elif isinstance(st, s.Each) and not group and self.definition.kind != "shortcut":
                self.each(st, state, nodes)
            elif isinstance(st, s.Layer):
                if group or self.definition.kind == "shortcut":
                    self.group_layer(st, state, nodes)
                else:
                    self.layer(st, state, nodes)
            elif group:
                self.error("a numbered group holds layers (and values) only", at=st)
            elif isinstance(st, s.Group):
                self.group(st, state, nodes)
            elif isinstance(st, s.Check):
                self.check(st, state, nodes)
            elif isinstance(st, s.Branch | s.Add):
                self.join(st, state, nodes)
            else:
                word = "remove" if isinstance(st, s.Remove) else st.where
                self.error(
                    f"`{word}` changes the definition this one extends, and "
                    f"{self.definition.kind} `{self.definition.name}` extends none",
                    f"write `{self.definition.kind} {self.definition.name}(...) extends NAME`, "
                    "or write the layers themselves",
                    span=st.span,
                )

    def let(self, st: s.Let, state: _State, nodes: list) -> None:
        name = st.name.text
        problem = value_problem(name)
        if problem is None and (name in state.bound or name in self.definition.param_names()):
            problem = f"`{name}` is already defined here"
        if problem:
            self.error(f"{problem}; choose another name for this value", span=st.name.span)
            return
        value = self.value(st.value, state)
        if value is None:
            return
        state.bound.add(name)
        if isinstance(value, Op):  # a local of the generated code
            nodes.append(LetNode(name, value, st))
            state.lets[name] = substitute(value, state.lets)
            value = Var(name, value.type)
        state.env[name] = self._named(name, value)

    def if_(self, st: s.If, state: _State, nodes: list, group: bool) -> None:
        condition = self.value(st.condition, state)
        if condition is None:
            return
        if type_of(condition) not in ("bool", "any"):
            self.error("an `if` needs a condition (a comparison)", span=st.condition.span)
            return
        decided = constant(condition)
        if isinstance(decided, bool):
            self.statements(st.then if decided else (st.otherwise or ()), state, nodes, group)
            return
        then, otherwise = state.copy(), state.copy()
        then_nodes: list = []
        otherwise_nodes: list = []
        self.statements(st.then, then, then_nodes, group)
        self.statements(st.otherwise or (), otherwise, otherwise_nodes, group)
        try:
            for name in then.env.keys() & otherwise.env.keys():
                a, b = then.env[name], otherwise.env[name]
                state.env[name] = a if a == b else apply("choose", condition, a, b)
            state.channels = apply("choose", condition, then.channels, otherwise.channels)
        except EvalError as problem:
            self.error(problem.message, problem.hint, span=st.span)
        state.labels = then.labels | otherwise.labels
        state.bound = then.bound | otherwise.bound
        state.added = then.added or otherwise.added
        state.branched = then.branched or otherwise.branched
        state.lets |= then.lets | otherwise.lets
        if then.parts != otherwise.parts:
            self.error("the two sides of this `if` give values of other parts (one is split, "
                       "the other not)", "split (or join) on both sides", span=st.span)  # fmt: skip
        state.parts = then.parts
        state.kept = {k: v for k, v in then.kept.items() if otherwise.kept.get(k) == v}
        nodes.append(WhenNode(condition, tuple(then_nodes), tuple(otherwise_nodes), st))

    def check(self, st: s.Check, state: _State, nodes: list) -> None:
        condition = self.value(st.condition, state)
        if condition is None:
            return
        decided = constant(condition)
        if decided is False:
            self.error(st.message.value, at=st)
        elif not isinstance(decided, bool):
            if type_of(condition) not in ("bool", "any"):
                self.error("`check` needs a condition (a comparison)", span=st.condition.span)
                return
            nodes.append(CheckNode(condition, st.message.value, st))

    def join(self, st, state: _State, nodes: list) -> None:
        what = "`add shortcut`" if isinstance(st, s.Add) else "`branch`"
        if state.each:
            self.error(f"{what} belongs in the block's body, not inside `each`", span=st.span)
        elif state.parts is not None:
            self.error(f"{what} reads a value split into {text(state.parts)} parts",
                       "join them first: `sum parts` or `concat`", span=st.span)  # fmt: skip
        elif self.definition.kind != "block":
            self.error(f"{what} belongs in a block, not in a {self.definition.kind}",
                       span=st.span)  # fmt: skip
        elif isinstance(st, s.Add):
            if state.added:
                self.error("a block adds its shortcut once: a second `add shortcut`",
                           "remove one of them", span=st.span)  # fmt: skip
                return
            state.added = True
            nodes.append(AddNode(st))
        elif state.branched:
            self.error("a block has one `branch`: a second one", "remove one of them",
                       span=st.span)  # fmt: skip
        elif state.added:
            self.error("`branch` comes before `add shortcut`: the shortcut reads the branch there",
                       span=st.span)  # fmt: skip
        else:
            state.branched = True
            nodes.append(BranchNode(st))

    # --- layers ----------------------------------------------------------------------------------
    def label(self, label: s.Word, state: _State) -> bool:
        scope = "network" if self.definition.kind in ("stem", "head") else "block"
        problem = label_problem(label.text, scope)
        if problem:
            self.error(f"{problem}; choose another name for this layer", span=label.span)
            return False
        if label.text in state.labels:
            self.error(f"two layers are named `{label.text}`", "give each layer its own name",
                       span=label.span)  # fmt: skip
            return False
        state.labels.add(label.text)
        return True

    def layer(self, st: s.Layer, state: _State, nodes: list) -> None:
        name = st.kind.text
        if name in self.definitions.blocks:
            self.call(st, state, nodes)
            return
        kind = KINDS.get(name)
        if kind is None:
            self.error(f"unknown layer `{name}`", self.definitions.layer_hint(name),
                       span=st.kind.span)  # fmt: skip
            return
        args = self.arguments(st, kind, state)
        if args is None or vanishes(kind, args):
            return
        kind, args = self.interpreter.normalised(kind, args)
        if kind.weighted and st.label is None:
            self.error(
                f"this {name} has weights, so it needs a name",
                f"write `NAME: {name} ...`; names become attributes and state_dict keys",
                at=st,
            )
            return
        if st.label is not None and not self.label(st.label, state):
            return
        out = self.channels(kind, args, state, st)
        if out is None:
            return
        node = LayerNode(st.label.text if st.label else "", kind.name, args, state.channels, out,
                         st.label is not None, st)  # fmt: skip
        nodes.append(node)
        state.channels = out

    def kernel_option(self, option: s.Option, st: s.Layer, state: _State):
        """`kernel K` of a layer written without `KxK`: a square kernel (K, K) of a value."""
        if st.kernel is not None:
            written = "x".join(map(str, st.kernel.values))
            self.error("the kernel size is given twice", f"remove `, kernel` or `{written}`",
                       span=option.span)  # fmt: skip
            return None
        if option.value is None:
            self.error("`kernel` needs a value", span=option.span)
            return None
        value = self.value(option.value, state)
        if value is None:
            return None
        if isinstance(value, tuple):
            return value
        if type_of(value) not in ("int", "float", "any"):
            self.error("`kernel` takes a whole number, a square kernel's size",
                       "write another shape as `conv KxL CHANNELS`", span=option.span)  # fmt: skip
            return None
        return (value, value)

    def channels(self, kind, args: dict, state: _State, st: s.Layer):
        """The channels out of the layer (None after reporting why it cannot read the value);
        `state.parts` follows it."""
        if kind.gate:
            return self.combined(kind, args, state, st)
        try:
            parts, factor = through(kind, args, state.parts)
            out = kind.channels(args, state.channels)
        except LayerError as problem:
            self.error(problem.message, problem.hint, at=st)
            return None
        state.parts = parts
        return out if factor == 1 else apply("*", out, factor)

    def combined(self, kind, args: dict, state: _State, st: s.Layer):
        """`multiply NAME` / `add NAME`: the value and a kept one (or the input), broadcast."""
        name = args["value"]
        if name == "input":
            if state.each:
                self.error(f"`{kind.name} input` inside `each`: a part cannot read the "
                           "definition's input", at=st)  # fmt: skip
                return None
            other, parts = state.inplanes, None
        elif name == "previous":
            if not state.each:
                self.error(f"`{kind.name} previous` reads the part before this one: it belongs "
                           "inside `each`", at=st)  # fmt: skip
                return None
            return state.channels  # the parts of `each` come out alike: checked per block
        elif name in state.kept:
            other, parts = state.kept[name]
        else:
            known = sorted(state.kept) + ["input"]
            self.error(f"`{kind.name} {name}`: no value is kept as `{name}` here",
                       did_you_mean(name, known, "values here") or "keep it first: `keep "
                       f"{name}`", at=st)  # fmt: skip
            return None
        given, needed = constant(state.channels), constant(other)
        if not symbolic(given) and not symbolic(needed) and given != needed and 1 not in (
                given, needed):  # fmt: skip
            what = "the block's input" if name == "input" else f"`{name}`"
            self.error(f"`{kind.name}` needs {needed} channels ({what}), got {given}", at=st)
            return None
        if (parts is None) != (state.parts is None) or (
                parts is not None and not symbolic(parts) and not symbolic(state.parts)
                and constant(parts) != constant(state.parts)):  # fmt: skip
            show = lambda p: "not split" if p is None else f"split into {text(p)} parts"  # noqa: E731
            self.error(f"`{kind.name} {name}` combines a value {show(state.parts)} with one "
                       f"{show(parts)}", "split (or join) them alike", at=st)  # fmt: skip
            return None
        return state.channels if not symbolic(needed) and needed == 1 else other

    def keep(self, st: s.Layer, state: _State, nodes: list) -> None:
        """`keep NAME`: the value here gets a name, for `multiply NAME` and `add NAME`."""
        if st.label is not None or st.kernel is not None or st.options or not isinstance(
                st.arg, s.Ref):  # fmt: skip
            self.error("`keep` takes one name: `keep NAME`", at=st)
            return
        name = st.arg.name
        problem = value_problem(name)
        if problem is None and name in ("input", "shortcut", "previous"):
            problem = f"`{name}` names the {name} already"
        if problem is None and (name in state.env or name in state.kept):
            problem = f"`{name}` is already defined here"
        if problem:
            self.error(f"{problem}; choose another name for this value", span=st.arg.span)
            return
        state.kept[name] = (state.channels, state.parts)
        nodes.append(KeepNode(name, state.channels, state.parts, st))

    def each(self, st: s.Each, state: _State, nodes: list) -> None:
        """`each NAME { ... }`: the body on each part of a split value."""
        if state.each:
            self.error("`each` inside `each`", "split once, and run one `each`", span=st.span)
            return
        if state.parts is None:
            self.error("`each` runs on the parts of a split value, and this one has none",
                       "split it first: `split N`", span=st.span)  # fmt: skip
            return
        name = st.name.text
        problem = value_problem(name)
        if problem is None and (name in state.env or name in state.kept):
            problem = f"`{name}` is already defined here"
        if problem:
            self.error(f"{problem}; choose another name for the part's number",
                       span=st.name.span)  # fmt: skip
            return
        inner = state.copy()
        inner.env[name] = Var(name, "int")
        inner.parts, inner.kept, inner.each = None, {}, True
        body: list = []
        self.statements(st.body, inner, body)
        if self.failed:
            return
        if inner.parts is not None:
            self.error("a part comes out of `each` split again", "join it inside the body",
                       span=st.span)  # fmt: skip
            return
        state.labels |= inner.labels
        state.lets |= inner.lets
        nodes.append(EachNode(name, state.parts, tuple(body), state.channels, inner.channels, st))
        state.channels = inner.channels

    def group(self, st: s.Group, state: _State, nodes: list) -> None:
        if not self.label(st.label, state):
            return
        inner: list = []
        start = state.channels
        self.statements(st.body, state, inner, group=True)
        count = [0]

        def numbered(node_list) -> tuple:
            out = []
            for node in node_list:
                if isinstance(node, LayerNode):
                    node = node._replace(attr=str(count[0]))
                    count[0] += 1
                elif isinstance(node, WhenNode):
                    node = node._replace(then=numbered(node.then),
                                         otherwise=numbered(node.otherwise))  # fmt: skip
                out.append(node)
            return tuple(out)

        nodes.append(GroupNode(st.label.text, numbered(inner), start, state.channels, st))

    def group_layer(self, st: s.Layer, state: _State, nodes: list) -> None:
        name = st.kind.text
        where = "a shortcut" if self.definition.kind == "shortcut" else "a numbered group"
        if name in self.definitions.blocks and self.definition.kind == "shortcut":
            if st.label is not None:
                self.error("a block used as a shortcut is the shortcut: it takes no name",
                           f"remove `{st.label.text}:`", span=st.label.span)  # fmt: skip
                return
            if any(isinstance(n, LayerNode | CallNode) for n in walk(nodes)):
                self.error("a shortcut holds one block used as a layer, alone",
                           "write the other layers inside that block", at=st)  # fmt: skip
                return
            self.call(st, state, nodes, shortcut=True)
            return
        if name in self.definitions.blocks:
            self.error(f"{where} holds primitive layers, not blocks", at=st)
            return
        if st.label is not None:
            self.error(
                f"the layers of {where} are named by their number (`downsample.0`, ...)",
                f"remove `{st.label.text}:`",
                span=st.label.span,
            )
            return
        kind = KINDS.get(name)
        if kind is None:
            self.error(f"unknown layer `{name}`", self.definitions.layer_hint(name),
                       span=st.kind.span)  # fmt: skip
            return
        args = self.arguments(st, kind, state)
        if args is None or vanishes(kind, args):
            return
        kind, args = self.interpreter.normalised(kind, args)
        out = self.channels(kind, args, state, st)
        if out is not None:
            nodes.append(LayerNode("", kind.name, args, state.channels, out, False, st))
            state.channels = out

    def call(self, st: s.Layer, state: _State, nodes: list, shortcut: bool = False) -> None:
        """A block used as a layer: its arguments, and its channels out from its own form. In a
        shortcut (`shortcut`), the block is the whole shortcut, and has no name of its own."""
        name = st.kind.text
        definition = self.definitions.blocks[name]
        if st.label is None and not shortcut:
            self.error(f"a block used as a layer needs a name: `NAME: {name} ...`", at=st)
            return
        if st.kernel is not None or st.arg is not None:
            self.error(f"`{name}` takes its arguments as options: `, name value`", at=st)
            return
        if not shortcut and not self.label(st.label, state):
            return
        if state.parts is not None:
            self.error(f"block `{name}` reads a value of one part, and this one is split into "
                       f"{text(state.parts)} parts", "join the parts first (`sum parts`, "
                       "`concat`), or use it on each part: `each i { ... }`", at=st)  # fmt: skip
            return
        known = definition.param_names()
        args = {}
        for option in st.options:
            if option.name.text not in known:
                self.error(
                    f"unknown option `{option.name.text}` for block `{name}`",
                    f"its parameters: {', '.join(sorted(known)) or '(none)'}",
                    span=option.name.span,
                )
                continue
            value = self.value(option.value, state) if option.value is not None else True
            if value is not None:
                args[option.name.text] = value
        if self.failed:
            return
        stack = self.interpreter.stack
        if name in stack:
            path = " -> ".join([*stack[stack.index(name) :], name])
            self.error(f"block `{name}` uses itself ({path})",
                       "a block cannot be a layer of itself", span=st.kind.span)  # fmt: skip
            return
        if len(stack) >= MAX_DEFINITION_NESTING:
            self.error(
                f"blocks used as layers nest more than {MAX_DEFINITION_NESTING} deep here",
                f"resdsl builds at most {MAX_DEFINITION_NESTING} levels of blocks inside blocks",
                span=st.kind.span,
            )
            return
        sub = self.interpreter.generic(name)
        if sub is None:
            self.failed = True  # its own mistakes are reported at its statements
            return
        if any(isinstance(n, AddNode | BranchNode) for n in sub.nodes):
            self.error(
                f"block `{name}` adds a shortcut, so it cannot be a layer of another block",
                "a block used as a layer has no `add shortcut` (its caller adds the shortcut)",
                at=st,
            )
            return
        bound = self.interpreter.bind(definition, args, state.channels, state.env["preact"],
                                      self.where)  # fmt: skip
        if bound is None:
            self.failed = True
            return
        try:
            out = substitute(sub.resolved(sub.out), bound)
            parts = None if sub.parts is None else substitute(sub.resolved(sub.parts), bound)
        except EvalError as problem:
            self.error(problem.message, problem.hint, at=st)
            return
        args = {p: bound[p] for p in known}  # the defaults too, as the caller computes them
        node = CallNode("" if shortcut else st.label.text, name, args, state.channels, out, st)
        nodes.append(node)
        state.channels, state.parts = out, parts

    def arguments(self, st: s.Layer, kind, state: _State) -> dict | None:
        """A layer's arguments, checked where they are known, every default filled in."""
        raw: dict[str, object] = {}
        if st.kernel is not None:
            if not kind.kernel:
                self.error(f"`{kind.name}` takes no kernel size", at=st)
                return None
            raw["kernel"] = st.kernel.values
        # `conv CHANNELS, kernel K`: a square kernel from a value (`conv KxK CHANNELS` otherwise)
        kernel_option = kind.kernel and any(o.name.text == "kernel" for o in st.options)
        if st.arg is not None:
            value = self.value(st.arg, state)
            if value is None:
                return None
            if kind.kernel and "kernel" not in raw and not kernel_option:
                raw["kernel"] = value if isinstance(value, tuple) else (value, value)
            elif kind.positional is not None:
                raw[kind.positional] = value
            else:
                self.error(f"`{kind.name}` takes no value", at=st)
                return None
        if kind.kernel and "kernel" not in raw and not kernel_option:
            self.error(f"`{kind.name}` needs a kernel size, e.g. `{kind.name} 3x3`", at=st)
            return None
        failed = False
        for option in st.options:
            name = option.name.text
            if name == "kernel" and kind.kernel:
                kernel = self.kernel_option(option, st, state)
                if kernel is None:
                    failed = True
                else:
                    raw["kernel"] = kernel
                continue
            spec = kind.options.get(name)
            if spec is None or name == kind.positional:
                allowed = [n for n in kind.options if n != kind.positional]
                self.error(
                    f"unknown option `{name}` for `{kind.name}`",
                    f"options of `{kind.name}`: {', '.join(allowed)}"
                    if allowed
                    else f"`{kind.name}` takes no options",
                    span=option.name.span,
                )
                failed = True
                continue
            if option.value is None:
                if spec.kind != "flag":
                    self.error(f"`{name}` needs a value", span=option.span)
                    failed = True
                    continue
                raw[name] = True
                continue
            value = self.value(option.value, state)
            if value is None:
                failed = True
                continue
            raw[name] = value
        if failed:
            return None
        missing = [n for n, o in kind.options.items() if o.default is None and n not in raw
                   and o.kind != "count" and not (o.kind == "whole" and n == "stride")]  # fmt: skip
        if missing:
            self.error(f"`{kind.name}` needs {missing[0]}", at=st)
            return None
        for name in list(raw):
            raw[name] = whole_where_needed(kind, name, raw[name])
            problem = argument_problem(kind, name, raw[name])
            if problem:
                hint = (
                    "its channels come from the block's arguments: raise the stage width (or the "
                    "option that divides it)" if name == "channels" else None
                )  # fmt: skip
                self.error(problem, hint, at=st)
                return None
        return complete(kind, raw)


def whole_where_needed(kind, name: str, value):
    """A count computed through a float (`inplanes * 0.25`) is whole when it comes out whole:
    the code says `int(...)`, and a value that is not whole is refused where it is known."""
    wants_whole = name == "kernel" or kind.options[name].kind in ("whole", "count")
    if not wants_whole:
        return value
    if name == "kernel":
        return tuple(_whole(v) for v in value) if isinstance(value, tuple) else value
    return _whole(value)


def _whole(value):
    if type_of(value) != "float":
        return value
    if symbolic(value):
        return apply("int", value)
    return int(value) if value.is_integer() else value


def argument_problem(kind, name: str, value) -> str | None:
    """Why a known `value` does not fit argument `name` of `kind` (None when it does, or when
    it is known per block only)."""
    if name != "kernel" and kind.options[name].kind == "name" and not isinstance(value, str):
        return (f"`{kind.name}` takes the name of a value (`input`, or one kept with `keep NAME`), "
                f"got {_show(text(value) if symbolic(value) else value)}")  # fmt: skip
    value = constant(value)
    if symbolic(value):
        return None
    if name == "kernel":
        entries = [constant(v) for v in value] if isinstance(value, tuple) else [value]
        if any(symbolic(v) for v in entries):
            return None
        ok = isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SPATIAL
            for v in entries
        )
        return None if ok else (
            f"{kind.name}'s kernel must be a positive size of at most {MAX_SPATIAL}, got "
            f"{_show(value)}"
        )  # fmt: skip
    spec = kind.options[name]
    if spec.kind in ("whole", "count"):
        low = 0 if spec.kind == "count" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "a whole number >= 0" if low == 0 else "a positive whole number"
            return f"{kind.name}'s {name} must be {what}, got {_show(value)}"
        if name in ("stride", "dilation", "padding") and value > MAX_SPATIAL:
            return f"{kind.name}'s {name} must be at most {MAX_SPATIAL}, got {value}"
    elif spec.kind == "probability":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            return f"{kind.name}'s {name} must be in [0, 1), got {_show(value)}"
    elif spec.kind == "positive":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            return f"{kind.name}'s {name} must be a number > 0, got {_show(value)}"
    elif spec.kind == "flag":
        if not isinstance(value, bool):
            return f"`{name}` is a flag: write `, {name}` alone"
    elif spec.kind == "word":
        if not isinstance(value, Sym) or value not in spec.choices:
            return f"{kind.name}'s {name} must be one of: {', '.join(spec.choices)}"
    return None


def _named_layers(nodes: list, scope: str) -> list:
    """Layers no one named get attribute names: their kind's (`relu`, `maxpool`), shared by
    identical parameter-free layers, and never one a layer of the definition is named."""
    taken = {n.attr for n in walk(nodes) if isinstance(n, LayerNode | GroupNode | CallNode)
             and (not isinstance(n, LayerNode) or n.labelled)}  # fmt: skip
    if scope == "network":
        from .names import NETWORK_ATTRIBUTES

        taken |= NETWORK_ATTRIBUTES
    names = Namespace(taken)
    shared: dict = {}

    def name(node_list):
        out = []
        for node in node_list:
            if isinstance(node, LayerNode) and not node.labelled:
                key = (node.kind, _hashable(node.args))
                if key not in shared:
                    shared[key] = names.take(DEFAULT_ATTRS.get(node.kind, node.kind))
                node = node._replace(attr=shared[key])
            elif isinstance(node, WhenNode):
                node = node._replace(then=tuple(name(node.then)),
                                     otherwise=tuple(name(node.otherwise)))  # fmt: skip
            elif isinstance(node, EachNode):
                node = node._replace(nodes=tuple(name(node.nodes)))
            out.append(node)
        return out

    return name(nodes)


def _hashable(args: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in args.items()))


def place(span: Span) -> str:
    path = "the prelude" if span.path.endswith("prelude.res") else span.path
    return f"{path}, line {span.line}"


def _show(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)
