"""Network IR + definitions -> concrete layers with shapes: the one form that analysis and both
backends read.

Each block of each stage is lowered by running its definition with the block's arguments: `let`s
are evaluated, `if`s decided, layers checked against `layers.KINDS` and given their input and
output shapes, parameters and multiply-adds. Identical blocks (same definition, arguments and
input shape) are lowered once and shared, so a 1,202-layer network costs a few blocks' work.
"""

from __future__ import annotations

from typing import NamedTuple

from . import ir
from . import syntax as s
from .definitions import Definitions, FlatDef, Sym, evaluate, preact_block
from .diagnostics import Report, Span
from .layers import KINDS, LayerError, Shape, complete
from .limits import MAX_LAYERS


class Layer(NamedTuple):
    """One primitive layer. `name` is its attribute (None: a parameter-free layer no one names)."""

    name: str | None
    kind: str
    args: dict
    inp: Shape
    out: Shape
    params: int
    macs: int
    source: s.Layer | None = None


class Group(NamedTuple):
    """Layers numbered 0, 1, ... under one name (an nn.Sequential)."""

    name: str
    layers: tuple[Layer, ...]
    inp: Shape
    out: Shape


class Add(NamedTuple):
    """The residual add: the main branch plus `shortcut` (None: the identity)."""

    shortcut: Shortcut | None
    out: Shape


class Branch(NamedTuple):
    """A projecting shortcut reads the main branch here."""


class Shortcut(NamedTuple):
    """A shortcut's layers, as built for one block (numbered when more than one)."""

    definition: str
    layers: tuple[Layer, ...]
    inp: Shape
    out: Shape

    @property
    def projects(self) -> bool:
        return any(KINDS[layer.kind].weighted for layer in self.layers)


class Block(NamedTuple):
    """One block: its definition, the arguments it was built with, and its items in order."""

    definition: str
    args: dict
    items: tuple  # Layer | Group | Block (a block used as a layer, `name` set) | Add | Branch
    inp: Shape
    out: Shape
    name: str | None = None  # when used as a layer of another block
    shortcut_name: str | None = None  # the network's shortcut option for this block

    def layers(self):
        """Every primitive layer inside, shortcuts included, in order."""
        for item in self.items:
            if isinstance(item, Layer):
                yield item
            elif isinstance(item, Group):
                yield from item.layers
            elif isinstance(item, Block):
                yield from item.layers()
            elif isinstance(item, Add) and item.shortcut is not None:
                yield from item.shortcut.layers

    @property
    def residual(self) -> bool:
        return any(isinstance(item, Add) for item in self.items)

    @property
    def depth(self) -> int:
        """Weighted layers on the main path, as the paper counts: convolutions and fully
        connected layers (shortcuts, and blocks used as layers such as an SE gate, are beside
        it)."""
        count = 0
        for item in self.items:
            for layer in item.layers if isinstance(item, Group) else (item,):
                count += isinstance(layer, Layer) and layer.kind in ("conv", "linear")
        return count


class Stage(NamedTuple):
    ir: ir.Stage
    attr: str  # layer1, layer2, ...
    blocks: tuple[Block, ...]
    out: Shape


class Lowered(NamedTuple):
    network: ir.Network
    preact: bool
    stem: Block
    stages: tuple[Stage, ...]
    head: tuple[Layer, ...]  # [bn_final, relu] (pre-activation), avgpool, [dropout], fc
    definitions: Definitions

    @property
    def features(self) -> int:
        return self.stages[-1].out[0]

    def blocks(self):
        for stage in self.stages:
            yield from stage.blocks

    @property
    def stochastic(self) -> bool:
        """Whether training draws random numbers inside the network (dropout, drop path)."""
        layers = [
            *self.stem.layers(),
            *(lay for b in self.blocks() for lay in b.layers()),
            *self.head,
        ]
        return any(layer.kind in ("dropout", "drop_path") for layer in layers)


class Lowering:
    def __init__(self, network: ir.Network, definitions: Definitions, report: Report):
        self.network, self.definitions, self.report = network, definitions, report
        self.cache: dict[tuple, Block | None] = {}
        self.preact = False

    # the whole network --------------------------------------------------------------------------
    def run(self) -> Lowered | None:
        net = self.network
        first = self.definitions.blocks.get(net.stages[0].block.name)
        self.preact = first is not None and preact_block(first)
        mixed = [
            st for st in net.stages
            if st.block.name in self.definitions.blocks
            and preact_block(self.definitions.blocks[st.block.name]) != self.preact
        ]  # fmt: skip
        if mixed:
            self.report.error(
                f"{mixed[0].title} mixes pre-activation and post-activation blocks",
                mixed[0].span,
                "a network's blocks either all start with a batchnorm (pre-activation) or none do",
            )
            return None
        channels, height, width = net.input
        stem_def = self.definitions.stems[net.stem.name]
        stem = self.block(stem_def, dict(net.stem.args), (channels, height, width), net.stem.span)
        if stem is None:
            return None
        shape = stem.out
        if not self._depth_is_sane(stem):
            return None
        stages = []
        total = sum(stage.blocks for stage in net.stages)
        index = 0
        dilation = 1
        for number, stage in enumerate(net.stages, start=1):
            if stage.stride > 1 and min(shape[1:]) == 1:
                self.report.error(
                    f"{stage.title} cannot subsample: its input is already {shape[1]}x{shape[2]}",
                    stage.span,
                    "the feature map vanishes; use a larger input, or stride 1 here",
                )
                return None
            blocks = []
            for i in range(stage.blocks):
                index += 1
                args = self._block_args(stage, i, dilation, index, total)
                definition = self.definitions.blocks[stage.block.name]
                context = f"{stage.title}, block {i + 1}: "
                block = self.block(definition, args, shape, stage.span, stage.shortcut,
                                   context=context)  # fmt: skip
                if block is None:
                    return None
                blocks.append(block)
                shape = block.out
            dilation = stage.dilation
            stages.append(Stage(stage, f"layer{number}", tuple(blocks), shape))
        head = self._head(shape)
        return Lowered(net, self.preact, stem, tuple(stages), head, self.definitions)

    def _depth_is_sane(self, stem: Block) -> bool:
        """Refuse absurd depths (`--set n=10**9`) from each stage's first block, before lowering
        every block."""
        depth, shape, dilation = stem.depth + 1, stem.out, 1
        for stage in self.network.stages:
            args = self._block_args(stage, 0, dilation, 1, 1)
            args.pop("drop_path", None)
            definition = self.definitions.blocks[stage.block.name]
            block = self.block(definition, args, shape, stage.span, stage.shortcut,
                               context=f"{stage.title}, block 1: ")  # fmt: skip
            if block is None:
                return False
            depth += stage.blocks * block.depth
            shape, dilation = block.out, stage.dilation
        if depth > MAX_LAYERS:
            self.report.error(
                f"network `{self.network.name}` would have {depth:,} layers; resdsl refuses "
                f"networks deeper than {MAX_LAYERS:,}",
                self.network.span,
                "check the block counts (and any --set values)",
            )
            return False
        return True

    def _block_args(self, stage: ir.Stage, i: int, dilation: int, index: int, total: int) -> dict:
        """A block's arguments: the stage's (planes, stride, dilation), the rule's drop rate,
        and the options written after `block`."""
        args = dict(stage.block.args)
        args["planes"] = stage.width
        if stage.stride != 1 and i == 0:
            args["stride"] = stage.stride
        if stage.dilation != 1 or dilation != 1:
            args["dilation"] = dilation if i == 0 else stage.dilation
        if self.network.drop_path:
            args["drop_path"] = self.network.drop_path * index / total
        return args

    def _head(self, shape: Shape) -> tuple[Layer, ...]:
        net = self.network
        layers = []
        if self.preact:
            layers.append(Layer("bn_final", "batchnorm", {"zero_init": False}, shape, shape,
                                2 * shape[0], 0))  # fmt: skip
            layers.append(Layer(None, "relu", {}, shape, shape, 0, 0))
        pooled = (shape[0], 1, 1)
        layers.append(Layer("avgpool", "global_avg_pool", {}, shape, pooled, 0, 0))
        if net.head.dropout:
            layers.append(Layer("dropout", "dropout", {"p": net.head.dropout}, pooled, pooled,
                                0, 0))  # fmt: skip
        classes = net.classes
        layers.append(Layer("fc", "linear", {"channels": classes}, pooled, (classes, 1, 1),
                            shape[0] * classes + classes, shape[0] * classes))  # fmt: skip
        return tuple(layers)

    # one block --------------------------------------------------------------------------------
    def block(
        self,
        definition: FlatDef,
        args: dict,
        shape: Shape,
        span: Span,
        shortcut: str | None = None,
        name: str | None = None,
        context: str = "",
    ) -> Block | None:
        key = (definition.name, tuple(sorted(args.items())), shape, shortcut, name)
        if key not in self.cache:
            self.cache[key] = self._block(definition, args, shape, span, shortcut, name, context)
        return self.cache[key]

    def _block(self, definition, args, shape, span, shortcut, name, context) -> Block | None:
        env = self._environment(definition, args, shape, span)
        if env is None:
            return None
        walker = _Walker(self, definition, env, shape, span, shortcut, context=context)
        items = walker.walk(definition.body)
        if items is None:
            return None
        return Block(definition.name, walker.args, tuple(items), shape, walker.shape, name,
                     shortcut)  # fmt: skip

    def _environment(self, definition: FlatDef, args: dict, shape: Shape, span: Span):
        unknown = sorted(set(args) - set(definition.param_names()))
        if unknown:
            self.report.error(
                f"{definition.kind} `{definition.name}` has no parameter `{unknown[0]}`, which "
                "the network sets",
                span,
                f"add `{unknown[0]} = ...` to its parameters, or change the network",
            )
            return None
        env: dict[str, object] = {"inplanes": shape[0], "preact": self.preact}
        for param in definition.params:
            if param.name.text in args:
                env[param.name.text] = args[param.name.text]
            elif param.default is not None:
                value = evaluate(param.default, env, self.report)
                if value is None:
                    return None
                env[param.name.text] = value
            else:
                self.report.error(
                    f"{definition.kind} `{definition.name}` needs a value for `{param.name.text}`",
                    span,
                    f"give it: `, {param.name.text} VALUE`",
                )
                return None
        return env

    def shortcut(self, name, outplanes, stride, shape: Shape, span: Span, context: str = ""):
        definition = self.definitions.shortcuts[name]
        env = {"inplanes": shape[0], "preact": self.preact, "outplanes": outplanes,
               "stride": stride}  # fmt: skip
        walker = _Walker(self, definition, env, shape, span, None, numbered=True,
                         context=context)  # fmt: skip
        items = walker.walk(definition.body)
        if items is None:
            return None
        layers = tuple(items)
        if not layers:
            return Add(None, shape)
        return Add(Shortcut(name, layers, shape, walker.shape), walker.shape)


class _Walker:
    """Runs a definition's statements for one set of arguments."""

    def __init__(self, lowering, definition, env, shape, span, shortcut, numbered=False,
                 context=""):  # fmt: skip
        self.lowering, self.definition, self.env = lowering, definition, env
        self.context = context
        self.report = lowering.report
        self.input, self.shape, self.span = shape, shape, span
        self.shortcut_name, self.numbered = shortcut, numbered
        self.failed = False
        self.args = {p.name.text: env[p.name.text] for p in definition.params}
        self.names: set[str] = set()

    def error(self, message: str, hint: str | None = None, at: s.Layer | None = None) -> None:
        """Reported at the statement that chose this definition (a stage, the stem), naming
        the definition, the layer and where it is written."""
        where = f"{self.definition.kind} `{self.definition.name}`"
        if at is not None:
            label = f" `{at.label.text}`" if getattr(at, "label", None) else ""
            where += f", {at.kind.text}{label} ({_place(at.span)})"
        self.report.error(f"{self.context}{where}: {message}", self.span, hint)
        self.failed = True

    def walk(self, body) -> list | None:
        items: list = []
        for statement in body:
            self.statement(statement, items)
            if self.failed:
                return None
        return items

    def statement(self, st, items: list) -> None:
        if isinstance(st, s.Let):
            value = evaluate(st.value, self.env, self.report)
            if value is None:
                self.failed = True
            else:
                self.env[st.name.text] = value
        elif isinstance(st, s.If):
            condition = evaluate(st.condition, self.env, self.report)
            if condition is None:
                self.failed = True
            elif not isinstance(condition, bool):
                self.error("an `if` needs a condition (a comparison)", at=None)
            else:
                for inner in st.then if condition else (st.otherwise or ()):
                    self.statement(inner, items)
        elif isinstance(st, s.Layer | s.Group) and st.label is not None and not self._unique(st):
            return
        elif isinstance(st, s.Layer):
            item = self.layer(st, None if self.numbered else st.label)
            if item is not None:
                items.append(item)
        elif isinstance(st, s.Group):
            inner = _Walker(self.lowering, self.definition, self.env, self.shape, self.span,
                            None, numbered=True, context=self.context)  # fmt: skip
            layers = inner.walk(st.body)
            if layers is None:
                self.failed = True
                return
            items.append(Group(st.label.text, tuple(layers), self.shape, inner.shape))
            self.shape = inner.shape
        elif isinstance(st, s.Check):
            condition = evaluate(st.condition, self.env, self.report)
            if condition is None:
                self.failed = True
            elif condition is not True:
                self.error(st.message.value, at=None)
        elif isinstance(st, s.Branch):
            if self.shortcut_name != "none":
                items.append(Branch())
        elif isinstance(st, s.Add):
            self.add(items)

    def _unique(self, st) -> bool:
        """A name is used once in a block: it is an attribute and a state_dict key."""
        if st.label.text in self.names or st.label.text in ("downsample", "expansion"):
            self.error(
                f"two layers are named `{st.label.text}`"
                if st.label.text in self.names
                else f"`{st.label.text}` is a name the block keeps for itself",
                "give each layer its own name",
                at=st if isinstance(st, s.Layer) else None,
            )
            return False
        self.names.add(st.label.text)
        return True

    def add(self, items: list) -> None:
        name = self.shortcut_name
        if name is None:
            self.error("the network gives no `shortcut` for this block's `add shortcut`")
            return
        if name == "none":
            return
        stride = self.env.get("stride", 1)
        add = self.lowering.shortcut(
            name, self.shape[0], stride, self.input, self.span, self.context
        )
        if add is None:
            self.failed = True
            return
        if add.out != self.shape:
            got = "x".join(map(str, add.out))
            want = "x".join(map(str, self.shape))
            self.error(
                f"shortcut {name} gives {got}, but the main branch gives {want}",
                "the shortcut must match the branch's channels and size: choose a shortcut "
                "that projects (B, C, D) or change the block",
            )
            return
        items.append(add)

    def layer(self, st: s.Layer, label: s.Word | None):
        kind_name = st.kind.text
        block_def = self.lowering.definitions.blocks.get(kind_name)
        if block_def is not None:
            return self.sub_block(st, block_def)
        kind = KINDS.get(kind_name)
        if kind is None:
            self.report.error(
                f"unknown layer `{kind_name}`",
                st.kind.span,
                self.lowering.definitions.layer_hint(kind_name),
            )
            self.failed = True
            return None
        args = self.read_args(st, kind)
        if args is None:
            return None
        if kind.vanishes_at_zero and not args[kind.vanishes_at_zero]:
            return None
        if kind.weighted and label is None and not self.numbered:
            self.error(
                f"this {kind_name} has weights, so it needs a name",
                f"write `NAME: {kind_name} ...`; names become attributes and state_dict keys",
                st,
            )
            return None
        try:
            out = kind.shape(args, self.shape)
        except LayerError as error:
            self.error(error.message, error.hint, st)
            return None
        if kind_name == "multiply" and (out[0] != self.input[0]):
            self.error(
                f"`multiply` needs {self.input[0]} channels (the block's input), got {out[0]}",
                at=st,
            )
            return None
        if kind_name == "multiply":
            out = self.input
        inp, self.shape = self.shape, out
        name = label.text if label is not None else None
        return Layer(name, kind_name, args, inp, out, kind.params(args, inp, out),
                     kind.macs(args, inp, out), st)  # fmt: skip

    def sub_block(self, st: s.Layer, definition: FlatDef):
        if st.label is None:
            self.error(f"a block used as a layer needs a name: `NAME: {st.kind.text} ...`", at=st)
            return None
        if st.kernel is not None or st.arg is not None:
            self.error(f"`{st.kind.text}` takes its arguments as options: `, name value`", at=st)
            return None
        known = {p.name.text for p in definition.params}
        args = {}
        for option in st.options:
            if option.name.text not in known:
                self.report.error(
                    f"unknown option `{option.name.text}` for block `{definition.name}`",
                    option.name.span,
                    f"its parameters: {', '.join(sorted(known)) or '(none)'}",
                )
                self.failed = True
                continue
            value = evaluate(option.value, self.env, self.report) if option.value else True
            if value is None:
                self.failed = True
                continue
            args[option.name.text] = value
        if self.failed:
            return None
        block = self.lowering.block(
            definition, args, self.shape, self.span, None, st.label.text, self.context
        )
        if block is None:
            self.failed = True
            return None
        self.shape = block.out
        return block

    def read_args(self, st: s.Layer, kind) -> dict | None:
        raw: dict[str, object] = {}
        if st.kernel is not None:
            if not kind.kernel:
                self.error(f"`{kind.name}` takes no kernel size", at=st)
                return None
            raw["kernel"] = st.kernel.values
        if st.arg is not None:
            value = evaluate(st.arg, self.env, self.report)
            if value is None:
                self.failed = True
                return None
            if kind.kernel and "kernel" not in raw:
                raw["kernel"] = (value, value) if isinstance(value, int) else value
            elif kind.positional is not None:
                raw[kind.positional] = value
            else:
                self.error(f"`{kind.name}` takes no value", at=st)
                return None
        if kind.kernel and "kernel" not in raw:
            self.error(f"`{kind.name}` needs a kernel size, e.g. `{kind.name} 3x3`", at=st)
            return None
        for option in st.options:
            name = option.name.text
            spec = kind.options.get(name)
            if spec is None or name == kind.positional:
                allowed = [n for n in kind.options if n != kind.positional]
                self.report.error(
                    f"unknown option `{name}` for `{kind.name}`",
                    option.name.span,
                    f"options of `{kind.name}`: {', '.join(allowed)}"
                    if allowed
                    else f"`{kind.name}` takes no options",
                )
                self.failed = True
                continue
            if spec.kind == "flag":
                if option.value is None:
                    raw[name] = True
                    continue
            elif option.value is None:
                self.report.error(f"`{name}` needs a value", option.span)
                self.failed = True
                continue
            value = evaluate(option.value, self.env, self.report)
            if value is None:
                self.failed = True
                continue
            raw[name] = value
        if self.failed:
            return None
        for name, value in raw.items():
            problem = _check(kind, name, value)
            if problem:
                hint = (
                    "its channels come from the block's arguments: raise the stage width (or the "
                    "option that divides it)" if name == "channels" else None
                )  # fmt: skip
                self.error(problem, hint, at=st)
                return None
        missing = [n for n, o in kind.options.items() if o.default is None and n not in raw
                   and o.kind != "count" and not (o.kind == "whole" and n in ("stride",))]  # fmt: skip
        if missing:
            self.error(f"`{kind.name}` needs {missing[0]}", at=st)
            return None
        return complete(kind, raw)


def _check(kind, name: str, value) -> str | None:
    """Why `value` does not fit argument `name` of `kind` (None when it does)."""
    if name == "kernel":
        ok = isinstance(value, tuple) and all(isinstance(v, int) and v >= 1 for v in value)
        return None if ok else f"{kind.name}'s kernel must be a positive size, got {value}"
    spec = kind.options[name]
    if spec.kind in ("whole", "count"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        low = 0 if spec.kind == "count" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "a whole number >= 0" if low == 0 else "a positive whole number"
            return f"{kind.name}'s {name} must be {what}, got {_show(value)}"
    elif spec.kind == "probability":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            return f"{kind.name}'s {name} must be in [0, 1), got {_show(value)}"
    elif spec.kind == "flag":
        if not isinstance(value, bool):
            return f"`{name}` is a flag: write `, {name}` alone"
    elif spec.kind == "word":
        if not isinstance(value, Sym) or value not in spec.choices:
            return f"{kind.name}'s {name} must be one of: {', '.join(spec.choices)}"
    return None


def _place(span: Span) -> str:
    path = "the prelude" if span.path.endswith("prelude.res") else span.path
    return f"{path}, line {span.line}"


def _show(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def lower(network: ir.Network, definitions: Definitions, report: Report) -> Lowered | None:
    return Lowering(network, definitions, report).run()
