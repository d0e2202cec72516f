"""model.py of the PyTorch backend, printed from the lowered network: one class per block class
(as torchvision's `BasicBlock` and `Bottleneck`), and a `ResNet` that builds its stages in a loop
(`_make_layer`) with its shortcuts made by `_downsample`. It prints the forms of `lower.py` and
decides nothing about the network."""

from __future__ import annotations

import re
from itertools import takewhile

from ...analysis import Analysis
from ...forms import (
    BlockClass,
    CallNode,
    EachNode,
    Form,
    GroupNode,
    KeepNode,
    LayerNode,
    LetNode,
    WhenNode,
    each_lists,
    guard,
    walk,
)
from ...lower import Add, Lowered
from ...names import Namespace, python_name, shortcut_attribute
from ...quoting import code_text
from ...symbolic import Named, Var, apply, literal, negated, symbolic, text
from ...table import block_text
from ..common import (
    annotation,
    class_doc,
    module_doc,
    shortcut_doc,
    speller,
    stage_extras,
    stem_description,
)

# Layers that return their input itself in some mode: what follows them may not work in place.
ALIASING = {"identity", "dropout", "drop_path", "split", "concat"}


def _kw(name: str, value, default, spell) -> str:
    if value == default and not symbolic(value):
        return ""
    return f", {name}={text(value, spell)}"


def _conv(p: TorchModel, a: dict, spell) -> str:
    kh, kw = a["kernel"]
    cin, cout = text(a["in"], spell), text(a["channels"], spell)
    stride, groups, dilation = a["stride"], a["groups"], a["dilation"]
    bias, padding = a["bias"], a["padding"]
    positional_stride = f", {text(stride, spell)}" if stride != 1 or symbolic(stride) else ""
    if (kh, kw) == (3, 3) and not bias and padding == dilation:
        p.used.add("conv3x3")
        p.conv3x3_groups |= groups != 1 or symbolic(groups)
        p.conv3x3_dilation |= dilation != 1 or symbolic(dilation)
        return (f"conv3x3({cin}, {cout}{positional_stride}{_kw('groups', groups, 1, spell)}"
                f"{_kw('dilation', dilation, 1, spell)})")  # fmt: skip
    if (kh, kw) == (1, 1) and not bias and groups == 1 and padding == 0 and dilation == 1:
        p.used.add("conv1x1")
        return f"conv1x1({cin}, {cout}{positional_stride})"
    kernel = text(kh, spell) if kh == kw else f"({text(kh, spell)}, {text(kw, spell)})"
    out = f"nn.Conv2d({cin}, {cout}, kernel_size={kernel}" + _kw("stride", stride, 1, spell)
    out += _kw("padding", padding, 0, spell) + _kw("dilation", dilation, 1, spell)
    out += _kw("groups", groups, 1, spell)
    return out + ("" if bias is True else ", bias=False") + ")"


def _pool(module: str, a: dict, spell, extra: str = "") -> str:
    kh, kw = a["kernel"]
    kernel = text(kh, spell) if kh == kw else f"({text(kh, spell)}, {text(kw, spell)})"
    return (f"nn.{module}(kernel_size={kernel}, stride={text(a['stride'], spell)}"
            f"{_kw('padding', a['padding'], 0, spell)}{extra})")  # fmt: skip


def _norm(p: TorchModel, a: dict, spell) -> str:
    if p.custom_norm:
        p.used.add("norm")
        return f"norm({text(a['in'], spell)})"
    return f"nn.BatchNorm2d({text(a['in'], spell)})"


def _group_norm(p: TorchModel, a: dict, spell) -> str:
    eps = "" if a["eps"] == 1e-5 else f", eps={text(a['eps'], spell)}"
    return f"nn.GroupNorm({text(a['groups'], spell)}, {text(a['in'], spell)}{eps})"


def _layer_norm(p: TorchModel, a: dict, spell) -> str:
    p.used.add("LayerNorm2d")
    eps = "" if a["eps"] == 1e-5 else f", eps={text(a['eps'], spell)}"
    return f"LayerNorm2d({text(a['in'], spell)}{eps})"


def _channel_conv(p: TorchModel, a: dict, spell) -> str:
    size = a["size"]
    padding = text(apply("//", apply("-", size, 1), 2), spell)
    return f"nn.Conv1d(1, 1, kernel_size={text(size, spell)}, padding={padding}, bias=False)"


def _activation(module: str, inplace: bool):
    def build(p: TorchModel, a: dict, spell) -> str:
        return f"nn.{module}(inplace=True)" if inplace else f"nn.{module}()"

    return build


def _drop_path(p: TorchModel, a: dict, spell) -> str:
    p.used.add("DropPath")
    survival = ", survival=True" if a["mode"] == "survival" else ""
    return f"DropPath({text(a['p'], spell)}{survival})"


def _pad_channels(p: TorchModel, a: dict, spell) -> str:
    p.used.add("ZeroPadShortcut")
    channels, inp = a["channels"], a["in"]
    extra = str(channels - inp) if not symbolic(channels) and not symbolic(inp) else (
        f"{text(channels, spell)} - {text(inp, spell)}"
    )  # fmt: skip
    return f"ZeroPadShortcut({extra}, {text(a['stride'], spell)})"


# kind -> the module that builds it (a: the layer's arguments; "in": its channels in)
MODULES = {
    "conv": _conv,
    "linear": lambda p, a, spell: (
        f"nn.Linear({text(a['in'], spell)}, {text(a['channels'], spell)})"
    ),
    "channel_conv": _channel_conv,
    "batchnorm": _norm,
    "groupnorm": _group_norm,
    "layernorm": _layer_norm,
    "relu": _activation("ReLU", True),
    "gelu": _activation("GELU", False),
    "silu": _activation("SiLU", True),
    "sigmoid": _activation("Sigmoid", False),
    "max_pool": lambda p, a, spell: _pool("MaxPool2d", a, spell),
    "avg_pool": lambda p, a, spell: _pool(
        "AvgPool2d",
        a,
        spell,
        (", ceil_mode=True" if a["ceil"] is True else "")
        + ("" if a["count_include_pad"] is True else ", count_include_pad=False"),
    ),  # fmt: skip
    "global_avg_pool": lambda p, a, spell: "nn.AdaptiveAvgPool2d(1)",
    "dropout": lambda p, a, spell: f"nn.Dropout(p={text(a['p'], spell)})",
    "drop_path": _drop_path,
    "multiply": None,  # `x * out` in forward
    "add": None,
    "split": None,
    "concat": None,
    "sum": None,
    "softmax": None,
    "identity": lambda p, a, spell: "nn.Identity()",
    "pad_channels": _pad_channels,
}


def _split(v: str, a: dict, spell) -> str:
    parts, groups = text(a["parts"], spell), a["groups"]
    if groups == 1:
        return f"{v}.unflatten(1, ({parts}, -1))"
    # G groups of N parts each -> N parts of G groups
    return f"{v}.unflatten(1, ({text(groups, spell)}, {parts}, -1)).transpose(1, 2).flatten(2, 3)"


def _chained(node: WhenNode, lines: list[str]) -> bool:
    """The `else` side of `node` is one `if` of its own (printed as `elif`)."""
    return (len(node.otherwise) == 1 and isinstance(node.otherwise[0], WhenNode)
            and bool(lines) and lines[0].startswith("if "))  # fmt: skip


def _without(condition, name: str):
    """`condition` less the terms joined by `and` that read `name` (None: nothing is left)."""
    terms = []

    def split(value) -> None:
        if getattr(value, "op", None) == "and":
            for arg in value.args:
                split(arg)
        else:
            terms.append(value)

    split(condition)
    kept = [term for term in terms if not re.search(rf"\b{name}\b", text(term))]
    if not kept:
        return None
    result = kept[0]
    for term in kept[1:]:
        result = apply("and", result, term)
    return result


def _kept(name: str, x: str, spell) -> str:
    """A value `multiply` and `add` read: the input, the part before (in `each`), or a kept one."""
    if name in ("input", "previous"):
        return x if name == "input" else "parts[-1]"
    return python_name(spell(name))


# the axes of a value: [N, C, H, W], or [N, PARTS, C, H, W] once split
SUMS = {"parts": "{v}.sum(1)", "positions": "{v}.sum((-2, -1), keepdim=True)",
        "channels": "{v}.sum(-3, keepdim=True)"}  # fmt: skip
SOFTMAXES = {"parts": "{v}.softmax(1)", "positions": "{v}.flatten(-2).softmax(-1).view_as({v})",
             "channels": "{v}.softmax(-3)"}  # fmt: skip

# kind -> how forward applies it to `v` (x: the block's input; a: the layer's arguments, and
# "split": whether the value has a parts axis; spell: the class's names) when it is not
# `self.NAME(v)`
FORWARD = {
    "global_avg_pool": lambda v, x, attr, a, spell: (
        f"{v}.mean((-2, -1), keepdim=True)" if a["split"] else f"{v}.mean((2, 3), keepdim=True)"
    ),
    "multiply": lambda v, x, attr, a, spell: f"{_kept(a['value'], x, spell)} * {v}",
    "add": lambda v, x, attr, a, spell: f"{v} + {_kept(a['value'], x, spell)}",
    "linear": lambda v, x, attr, a, spell: f"self.{attr}({v}.movedim(1, -1)).movedim(-1, 1)",
    # the channels as a sequence of one feature: [N, C, 1, 1] -> [N, 1, C] -> [N, C, 1, 1]
    "channel_conv": lambda v, x, attr, a, spell: (
        f"self.{attr}({v}.view({v}.shape[0], 1, -1)).view({v}.shape[0], -1, 1, 1)"
    ),
    "split": lambda v, x, attr, a, spell: _split(v, a, spell),
    "concat": lambda v, x, attr, a, spell: f"{v}.flatten(1, 2)",
    "sum": lambda v, x, attr, a, spell: SUMS[a["axis"]].format(v=v),
    "softmax": lambda v, x, attr, a, spell: SOFTMAXES[a["axis"]].format(v=v),
}
FORWARD_ONLY = ("global_avg_pool", "multiply", "add", "split", "concat", "sum", "softmax")


class _Body:
    """A form's nodes as `self.NAME = ...` lines and forward lines."""

    def __init__(self, printer: TorchModel, spell, var: str, inp: str, started: bool = False,
                 index: str | None = None, count: str = ""):  # fmt: skip
        self.printer, self.spell = printer, spell
        self.var, self.inp = var, inp  # the value being computed, and the block's input
        self.started = started
        self.fresh = False  # the value is a tensor of its own (not the input, nor an alias of it)
        self.tokens: list[tuple[str, str]] = []  # ("line", text) | ("attr", name), in order
        self.attrs: dict[str, str] = {}  # attribute -> its constructor
        self.shared: set[str] = set()  # attributes that read the input: never in place
        self.forward: list[str] = []
        self.kinds: list[str | None] = []  # the kind each forward line applies (None: none)
        self.zero_init: list[str] = []
        self.index, self.count = index, count  # inside `each`: named layers are lists
        self.split = False  # the value has a parts axis
        self.guarded: dict[str, object] = {}  # attribute -> when it exists (else None)
        self.known: set[str] = set()  # attributes made before (outside an `if` being printed)
        self.read: set[str] = set()  # values forward reads from attributes (`self.first`)
        self.sizes: dict[str, str] = {}  # inside `each`: a list -> its length (`each_lists`)

    def nodes(self, nodes) -> _Body:
        nodes = list(nodes)
        for number, node in enumerate(nodes):
            if self._joined(nodes, number):
                continue
            if isinstance(node, LetNode):
                self.let(node)
            elif isinstance(node, LayerNode):
                self.layer(node)
            elif isinstance(node, GroupNode):
                self.group(node)
            elif isinstance(node, CallNode):
                self.call(node)
            elif isinstance(node, KeepNode):
                self._line(f"{python_name(self.spell(node.name))} = {self._source()}")
                self.fresh = False  # what follows must not change it in place
            elif isinstance(node, EachNode):
                self.each(node, joined=self._joined(nodes, number + 1))
            elif isinstance(node, WhenNode):
                self.when(node)
            elif type(node).__name__ in ("BranchNode", "AddNode"):
                self._line(type(node).__name__)
        return self

    @staticmethod
    def _joined(nodes: list, number: int) -> bool:
        """Node `number` is a `concat` right after `each`: one torch.cat does both."""
        node = nodes[number] if number < len(nodes) else None
        return (isinstance(node, LayerNode) and node.kind == "concat" and number > 0
                and isinstance(nodes[number - 1], EachNode))  # fmt: skip

    def init(self) -> list[str]:
        """The constructor lines so far (an activation that reads the input is not in place; a
        layer built on one side of an `if` is None on the other)."""
        lines = []
        for what, value in self.tokens:
            if what == "line":
                lines.append(value)
            else:
                constructor = self.attrs[value]
                if value in self.shared:
                    constructor = constructor.replace("(inplace=True)", "()")
                if value in self.guarded:
                    constructor += f" if {text(self.guarded[value], self.spell)} else None"
                lines.append(f"self.{value} = {constructor}")
        self.tokens = []
        lines += [f"self.{name} = {name}" for name in sorted(self.read)]
        self.read = set()
        return lines

    def let(self, node: LetNode) -> None:
        self.tokens.append(("line", f"{self.spell(node.name)} = {text(node.value, self.spell)}"))

    def module(self, node: LayerNode) -> str:
        return MODULES[node.kind](self.printer, dict(node.args, **{"in": node.inp}), self.spell)

    def layer(self, node: LayerNode) -> None:
        if node.args.get("zero_init") is True:  # a norm's scale (gamma), zero at the start
            self.zero_init.append(node.attr)
        ref = self._ref(node.attr, node.labelled)
        if node.kind not in FORWARD_ONLY:
            if node.kind == "conv" and self.started and self.forward:
                self._line("")
            self._assign(node.attr, self.module(node), node.labelled)
            if not self.fresh:
                self.shared.add(node.attr)
        apply = FORWARD.get(node.kind)
        source = self._source()
        self._apply(apply(source, self.inp, ref, dict(node.args, split=self.split), self.spell)
                    if apply else f"self.{ref}({source})", node.kind)  # fmt: skip
        if node.kind == "split":
            self.split = True
        elif node.kind == "concat" or (node.kind == "sum" and node.args["axis"] == "parts"):
            self.split = False

    def group(self, node: GroupNode) -> None:
        parts = []
        for inner in node.nodes:
            if isinstance(inner, LetNode):
                self.let(inner)
            else:
                parts.append(self.module(inner))
        self._assign(node.attr, "nn.Sequential(" + ", ".join(parts) + ")", True)
        self._apply(f"self.{self._ref(node.attr, True)}({self._source()})", "group")

    def call(self, node: CallNode) -> None:
        cls = self.printer.lowered.layer_class(node.definition)
        args = [text(node.inp, self.spell)]
        args += [f"{cls.spelling[name]}={text(node.args[name], self.spell)}"
                 for name in cls.variables]  # fmt: skip
        self._assign(node.attr, f"{cls.name}({', '.join(args)})", True)
        self._apply(f"self.{self._ref(node.attr, True)}({self._source()})", "block")

    def each(self, node: EachNode, joined: bool = False) -> None:
        """`each`: a loop over the parts; the layers named inside are nn.ModuleLists."""
        index = python_name(self.spell(node.name))

        def spell(name: str) -> str:
            return index if name == node.name else self.spell(name)

        inner = _Body(self.printer, spell, "part", "part", True, index, text(node.count, spell))
        inner.sizes = {attr: text(size, spell) for attr, size in each_lists(node).items()}
        inner.known = set(self.attrs) | self.known
        inner.nodes(node.nodes)
        for what, value in inner.tokens:
            if what == "attr":
                if value in inner.shared:
                    self.shared.add(value)
                if value not in self.attrs and value in inner.guarded:
                    guard = _without(inner.guarded[value], node.name)
                    if guard is not None:  # a part holds it: the block, where the rest holds
                        self.guarded[value] = guard
                self._assign(value, inner.attrs[value])
        self.read |= inner.read
        self.zero_init += inner.zero_init
        numbered = any(re.search(rf"\b{index}\b", line) for line in inner.forward)
        loop = (f"for {index}, part in enumerate({self._source()}.unbind(1)):" if numbered
                else f"for part in {self._source()}.unbind(1):")  # fmt: skip
        if self.started and self.forward:
            self._line("")
        self._line("parts = []")
        self._line(loop)
        for line in inner.forward:
            self._line(f"    {line}" if line else "")
        self._line("    parts.append(part)")
        self._apply(f"torch.{'cat' if joined else 'stack'}(parts, 1)", "each")
        self.split = not joined
        self._line("")

    def when(self, node: WhenNode) -> None:
        """An `if` on a value that differs between the class's blocks (or between the parts of
        `each`): the class holds what either side builds (None where its side is not taken),
        and forward chooses, reading the value from an attribute (`self.first`)."""
        if not self.started:  # a side that builds nothing leaves the input
            self._line(f"{self.var} = {self.inp}")
            self.started = True
        condition = node.condition
        sides = []
        for nodes in (node.then, node.otherwise):
            side = _Body(self.printer, self.spell, self.var, self.inp, True, self.index, self.count)
            side.fresh, side.split, side.read, side.sizes = (self.fresh, self.split, self.read,
                                                             self.sizes)  # fmt: skip
            side.known = set(self.attrs) | self.known
            side.nodes(nodes)
            sides.append(side)
        then, otherwise = sides
        for side, when in ((then, condition), (otherwise, negated(condition))):
            for what, attr in side.tokens:
                if what == "line":
                    self.tokens.append((what, attr))
                    continue
                other = (otherwise if side is then else then).attrs.get(attr)
                if attr in self.attrs:
                    continue
                constructor = side.attrs[attr]
                if other is not None and side is then and other != constructor:
                    constructor = f"{constructor} if {text(condition, self.spell)} else {other}"
                self._assign(attr, constructor)
                if other is None and attr not in self.known:  # built on this side only
                    inner = side.guarded.get(attr)
                    self.guarded[attr] = when if inner is None else apply("and", when, inner)
                elif attr in side.guarded:
                    self.guarded[attr] = side.guarded[attr]
            self.shared |= side.shared
            self.zero_init += [a for a in side.zero_init if a not in self.zero_init]
            self.read |= side.read
        # one named layer alone, built only here: as timm's `if self.avd_last is not None` (a
        # name is the layer's own: no other statement builds or reads it)
        alone = (len(node.then) == 1 and not node.otherwise and isinstance(node.then[0], LayerNode)
                 and node.then[0].labelled and node.then[0].attr in self.guarded)  # fmt: skip
        if alone and not self.index:
            test = f"self.{node.then[0].attr} is not None"
        else:
            test = text(condition, self._forward_spell)
        if then.forward:
            self._line(f"if {test}:")
            for line in then.forward:
                self._line(f"    {line}" if line else "")
            if _chained(node, otherwise.forward):  # else: if ... -> elif ...
                for line in ["el" + otherwise.forward[0], *otherwise.forward[1:]]:
                    self._line(line)
                otherwise.forward = []
            elif otherwise.forward:
                self._line("else:")
        elif otherwise.forward:
            self._line(f"if {text(negated(condition), self._forward_spell)}:")
        for line in otherwise.forward:
            self._line(f"    {line}" if line else "")
        self.fresh = self.fresh and then.fresh and otherwise.fresh

    def _forward_spell(self, name: str) -> str:
        """A value forward reads: the part's number, or what the constructor kept of it."""
        spelled = self.spell(name)
        if spelled == self.index:
            return spelled
        self.read.add(spelled)
        return f"self.{spelled}"

    def _ref(self, attr: str, labelled: bool) -> str:
        """How forward reads a layer: `name`, or `name[i]` for a list inside `each`."""
        return f"{attr}[{self.index}]" if self.index is not None and labelled else attr

    def _assign(self, attr: str, constructor: str, labelled: bool = False) -> None:
        if attr in self.attrs:
            self.guarded.pop(attr, None)  # used where it is always built
        else:
            if self.index is not None and labelled:  # one layer per part
                numbered = re.search(rf"\b{self.index}\b", constructor)
                count = self.sizes.get(attr, self.count)
                constructor = (f"nn.ModuleList([{constructor} for {self.index if numbered else '_'} "
                               f"in range({count})])")  # fmt: skip
            self.attrs[attr] = constructor
            self.tokens.append(("attr", attr))

    def _source(self) -> str:
        return self.var if self.started else self.inp

    def _line(self, line: str, kind: str | None = None) -> None:
        self.forward.append(line)
        self.kinds.append(kind)

    def _apply(self, expression: str, kind: str) -> None:
        self._line(f"{self.var} = {expression}", kind)
        self.started = True
        self.fresh = self.fresh or kind not in ALIASING


class TorchModel:
    def __init__(self, lowered: Lowered, custom_norm: bool):
        self.lowered, self.custom_norm = lowered, custom_norm
        self.byob = lowered.network.layout == "byobnet"
        self.shortcut = shortcut_attribute(lowered.network.layout)  # a block's shortcut module
        self.used: set[str] = set()  # the helpers the printed code calls
        self.conv3x3_groups = self.conv3x3_dilation = False
        self.zero_init: dict[str, list[str]] = {}

    # block classes ------------------------------------------------------------------------------
    def block_class(self, cls: BlockClass) -> str:
        own = {"inplanes": "inplanes"}
        if cls.expansion is not None:
            own["expansion"] = "self.expansion"
        spell = speller(cls, own)
        body = _Body(self, spell, "out", "x").nodes(cls.form.nodes)
        self.zero_init[cls.name] = body.zero_init
        lines = [f"class {cls.name}(nn.Module):", f'    """{class_doc(cls)}"""', ""]
        if cls.expansion is not None:
            lines += [f"    expansion = {cls.expansion}", ""]
        lines.append(f"    def __init__(self, {', '.join(signature(cls))}) -> None:")
        lines.append("        super().__init__()")
        lines += [f"        {line}" for line in body.init()]
        if cls.residual:
            lines.append(f"        self.{self.shortcut} = downsample")
        lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
        forward = self.forward(cls, body)
        if self.shortcut != "downsample":  # timm's byobnet names it `shortcut`
            forward = [line.replace("self.downsample", f"self.{self.shortcut}") for line in forward]
        lines += [f"        {line}" if line else "" for line in forward]
        return "\n".join(lines)

    def forward(self, cls: BlockClass, body: _Body) -> list[str]:
        lines: list[str] = []
        branched = "BranchNode" in body.forward
        if cls.residual and not branched:
            lines += ["identity = x", ""]
        applied: list[str] = []  # the kinds of the layers applied so far
        for line, kind in zip(body.forward, body.kinds, strict=True):
            if line in ("BranchNode", "AddNode") and not cls.residual:
                continue
            if line == "BranchNode":
                source = "out" if applied else "x"
                source = {"x": "x", "branch": source,
                          "mixed": f"x if isinstance(self.downsample, ZeroPadShortcut) else {source}"}[cls.reads]  # fmt: skip
                lines.append(
                    f"identity = x if self.downsample is None else self.downsample({source})"
                )
            elif line == "AddNode":
                if not branched:
                    lines += ["", "if self.downsample is not None:",
                              "    identity = self.downsample(x)", ""]  # fmt: skip
                else:
                    lines.append("")
                if not applied:
                    lines.append("out = x + identity")
                    applied.append("add")
                elif all(kind in ALIASING for kind in applied):  # out may be x itself
                    lines.append("out = out + identity")
                else:
                    lines.append("out += identity")
            else:
                lines.append(line)
                if kind is not None:
                    applied.append(kind)
        if not applied:
            lines.append("out = x")
        lines.append("return out")
        return lines

    # the network --------------------------------------------------------------------------------
    def shortcut_method(self, name: str, method: str) -> list[str]:
        form = self.lowered.shortcut_forms[name]
        spell = speller_of_shortcut(form, {"inplanes": "self.inplanes", "outplanes": "outplanes",
                                           "stride": "stride"})  # fmt: skip
        nodes = list(form.nodes)
        guarded = guard(form)
        lines = [f"def {method}(self, outplanes: int, stride: int) -> nn.Module | None:",
                 f'    """{shortcut_doc(self.lowered, name, guarded is not None)}"""']  # fmt: skip
        if guarded is not None:
            lets, when = guarded
            lines += [f"    {spell(n.name)} = {text(n.value, spell)}" for n in lets]
            lines += [f"    if {text(negated(when.condition), spell)}:", "        return None"]
            nodes = list(when.then)
        body = _Body(self, spell, "x", "x")
        modules = []
        for node in nodes:
            if isinstance(node, LetNode):
                lines.append(f"    {spell(node.name)} = {text(node.value, spell)}")
            elif isinstance(node, WhenNode):
                then, otherwise = body.module(node.then[0]), body.module(node.otherwise[0])
                modules.append(f"{then} if {text(node.condition, spell)} else {otherwise}")
            elif isinstance(node, LayerNode):
                modules.append(body.module(node))
            elif isinstance(node, CallNode):  # a block used as the shortcut
                cls = self.lowered.layer_class(node.definition)
                args = [spell("inplanes")] + [
                    f"{cls.spelling[name]}={text(node.args[name], spell)}" for name in cls.variables
                ]
                modules.append(f"{cls.name}({', '.join(args)})")
        if not modules:
            lines.append("    return None")
        elif len(modules) == 1:
            lines.append(f"    return {modules[0]}")
        else:
            lines.append(f"    return nn.Sequential({', '.join(modules)})")
        return lines


def signature(cls: BlockClass) -> list[str]:
    """`inplanes`, then `planes`, `stride` and `downsample` as torchvision's blocks take them,
    then the other constructor arguments (those without a default keyword-only)."""

    def typed(name: str) -> str:
        text_ = f"{cls.spelling[name]}: {annotation(cls.form.params[name])}"
        return text_ + (f" = {literal(cls.defaults[name])}" if name in cls.defaults else "")

    first = [typed(n) for n in ("planes", "stride") if n in cls.variables]
    if cls.residual:
        first.append("downsample: nn.Module | None = None")
    rest = [n for n in cls.variables if n not in ("planes", "stride")]
    defaulted = [typed(n) for n in rest if n in cls.defaults]
    required = [typed(n) for n in rest if n not in cls.defaults]
    return ["inplanes: int", *first, *defaulted, *(["*", *required] if required else [])]


def speller_of_shortcut(form: Form, own: dict[str, str]):
    def spell(name: str) -> str:
        return own.get(name, name)

    return spell


HELPERS = {
    "conv3x3": '''def conv3x3(in_planes: int, out_planes: int, stride: int = 1{g}{d}) -> nn.Conv2d:
    """3x3 convolution with padding."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding={p}{g2}{d2}, bias=False
    )''',
    "conv1x1": '''def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)''',
    "norm": '''def norm(channels: int) -> nn.BatchNorm2d:
    """Batch normalisation with the spec's momentum and epsilon."""
    return nn.BatchNorm2d(channels, eps={eps}, momentum={momentum})''',
    "ZeroPadShortcut": '''class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by the stride, with zeros for the new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))''',
    "LayerNorm2d": '''class LayerNorm2d(nn.LayerNorm):
    """Layer normalisation over the channels at each position (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)''',
    "DropPath": '''class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's residual branch is dropped with probability
    `p`. Kept branches are scaled by 1 / (1 - p) (as timm), or with `survival`, left as they are
    in training and scaled by 1 - p in evaluation (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0, survival: bool = False) -> None:
        super().__init__()
        self.p = p
        self.survival = survival

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        if not self.training:
            return x * keep if self.survival else x
        if self.p == 0.0:
            return x
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask if self.survival else x * mask / keep''',
}


def _helpers(printer: TorchModel, net) -> list[str]:
    out = []
    for name, code in HELPERS.items():
        if name not in printer.used:
            continue
        if name == "conv3x3":
            grouped, dilated = printer.conv3x3_groups, printer.conv3x3_dilation
            code = code.format(
                g=", groups: int = 1" if grouped else "",
                d=", dilation: int = 1" if dilated else "",
                p="dilation" if dilated else "1",
                g2=", groups=groups" if grouped else "",
                d2=", dilation=dilation" if dilated else "",
            )
        elif name == "norm":
            code = code.format(eps=repr(net.batchnorm.eps), momentum=repr(net.batchnorm.momentum))
        out.append(code)
    return out


def _resnet(printer: TorchModel, net) -> str:
    lowered = printer.lowered
    stem_spell = speller_of_shortcut(lowered.stem_form, {})
    stem = _Body(printer, stem_spell, "x", "x", started=True).nodes(lowered.stem_form.nodes)
    if printer.byob:  # the stem is a module of its own (`stem.conv1.conv`): printed as `Stem`
        printer.stem_body = stem
        stem = _Body(printer, stem_spell, "x", "x", started=True)
        stem.tokens.append(("line", "self.stem = Stem()"))
        stem.forward.append("x = self.stem(x)")
        stem.kinds.append(None)
    stage_classes = lowered.stage_classes
    kinds = sorted({st.shortcut for st in net.stages if st.shortcut != "none"})
    dilated = any(st.dilation != 1 for st in net.stages)
    drop = net.drop_path > 0
    extras = stage_extras(lowered)
    many = bool(kinds) and (len(kinds) > 1 or "none" in {st.shortcut for st in net.stages})
    numbered = any("index" in c.variables for c in stage_classes)  # the block's place
    generic = len(stage_classes) > 1 or many or dilated or drop or bool(extras) or numbered
    init = [
        f"def __init__(self, num_classes: int = {net.classes}) -> None:",
        "    super().__init__()",
        f"    self.inplanes = {lowered.stem.out[0]}",
    ]
    if dilated:
        init.append("    self.dilation = 1")
    init.append(f"    # stem: {stem_description(lowered)}")
    init += [f"    {line}" for line in stem.init()]
    init.append("")
    if drop:
        total = sum(st.blocks for st in net.stages)
        init.append(f"    # stochastic depth: block l of {total} is dropped with probability "
                    f"{net.drop_path:g} * l / {total}")  # fmt: skip
        init.append(f"    rates = [{net.drop_path!r} * i / {total} for i in range(1, {total + 1})]")
    first = 0
    if printer.byob:
        init.append("    self.stages = nn.Sequential(")
    for stage in lowered.stages:
        st, cls = stage.ir, stage.cls
        args = [cls.name] if len(stage_classes) > 1 else []
        args += [str(st.width), str(st.blocks)]
        if st.stride > 1:
            args.append(f"stride={st.stride}")
        if many:
            args.append(f'shortcut="{st.shortcut}"')
        if st.dilation != 1:
            args.append(f"dilation={st.dilation}")
        if drop:
            args.append(f"drop_path=rates[{first}:{first + st.blocks}]")
        for name in extras:
            if name in cls.variables:
                args.append(f"{name}={literal(stage.blocks[0].args[name])}")
        first += st.blocks
        out = "x".join(map(str, stage.out))
        if printer.byob:
            init.append(f"        self._make_layer({', '.join(args)}),  # {st.name}: {out}")
        else:
            init.append(
                f"    self.{stage.attr} = self._make_layer({', '.join(args)})  # {st.name}: {out}"
            )
    if printer.byob:
        init.append("    )")
    neck = None
    if lowered.neck_form is not None:  # a head definition's layers before the pool
        neck = _Body(printer, stem_spell, "x", "x", started=True).nodes(lowered.neck_form.nodes)
        init.append(f"    # head: {block_text(lowered.neck)}")
        init += [f"    {line}" for line in neck.init()]
    for node in lowered.head_form:  # BN and ReLU (pre-activation), the pool, dropout, the fc
        if printer.byob and node.kind in ("global_avg_pool", "dropout", "linear"):
            if node.kind == "linear":
                stem.tokens.append(
                    ("line", f"self.head = ClassifierHead({_features(printer, net)}, num_classes)")
                )
            continue
        if node.kind == "global_avg_pool":
            stem.tokens.append(("line", f"self.{node.attr} = nn.AdaptiveAvgPool2d((1, 1))"))
        elif node.kind == "linear":
            stem.tokens.append(
                ("line", f"self.{node.attr} = nn.Linear({_features(printer, net)}, num_classes)")
            )
        else:
            stem._assign(node.attr, stem.module(node))
    init += [f"    {line}" for line in stem.init()]
    init += [
        "",
        "    for m in self.modules():",
        "        if isinstance(m, nn.Conv2d):",
        f'            nn.init.kaiming_normal_(m.weight, mode="{net.init.mode}", nonlinearity="relu")',
    ]
    norms = [module for kind, module in (("batchnorm", "nn.BatchNorm2d"), ("groupnorm", "nn.GroupNorm"))
             if kind in printer.lowered.kinds]  # fmt: skip
    if norms:
        init += [
            f"        elif isinstance(m, {norms[0] if len(norms) == 1 else '(' + ', '.join(norms) + ')'}):",
            "            nn.init.ones_(m.weight)",
            "            nn.init.zeros_(m.bias)",
        ]
    zero = [c for c in stage_classes if printer.zero_init.get(c.name) and c.residual]
    if net.init.zero_init_residual and zero:
        init += ["", "    # Zero-initialise the last BN of each residual branch: every block starts "
                 "as the identity.", "    for m in self.modules():"]  # fmt: skip
        for i, c in enumerate(zero):
            init.append(f"        {'if' if i == 0 else 'elif'} isinstance(m, {c.name}):")
            init += [
                f"            nn.init.zeros_(m.{attr}.weight)" for attr in printer.zero_init[c.name]
            ]
    methods = [init, _make_layer(printer, kinds, generic, dilated, drop, extras, numbered)]
    if kinds:
        if len(kinds) == 1:
            methods.append(printer.shortcut_method(kinds[0], "_downsample"))
        else:
            taken = Namespace()
            names = {k: taken.take(f"_shortcut_{k.lower()}") for k in kinds}
            table = ", ".join(f'"{k}": self.{names[k]}' for k in kinds)
            methods.append([
                "def _downsample(self, outplanes: int, stride: int, shortcut: str) -> nn.Module | None:",
                '    """The shortcut of a block, by its stage\'s option; None is the identity."""',
                f"    return {{{table}}}[shortcut](outplanes, stride)",
            ])  # fmt: skip
            for k in kinds:
                methods.append(printer.shortcut_method(k, names[k]))
    forward_features = ["def forward_features(self, x: torch.Tensor) -> torch.Tensor:"]
    forward_features += [
        f"    {line}" for line in stem.forward if line not in ("AddNode", "BranchNode")
    ]
    forward_features.append("")
    if printer.byob:
        forward_features.append("    x = self.stages(x)")
    else:
        forward_features += [f"    x = self.{stage.attr}(x)" for stage in lowered.stages]
    if neck is not None:
        forward_features += [f"    {line}" for line in neck.forward if line]
    forward = [
        "def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "    x = self.forward_features(x)",
    ]
    pre = list(takewhile(lambda node: node.kind != "global_avg_pool", lowered.head_form))
    if pre:
        forward_features.append("")
        forward_features += [f"    x = self.{node.attr}(x)" for node in pre]
    forward_features.append("    return x")
    for node in lowered.head_form:
        if node in pre:
            continue
        if printer.byob:
            forward.append("    x = self.head(x)")
            break
        forward.append(f"    x = self.{node.attr}(x)")
        if node.kind == "global_avg_pool":
            forward.append("    x = torch.flatten(x, 1)")
    forward.append("    return x")
    methods += [forward_features, forward]
    if printer.byob:
        methods.append([
            "@property",
            "def fc(self) -> nn.Linear:",
            '    """The classifier, `head.fc` (as torchvision\'s `model.fc`)."""',
            "    return self.head.fc",
        ])  # fmt: skip
    lines = [
        "class ResNet(nn.Module):",
        f'    """{net.name}, built as the spec says; `forward_features` ends before the pool."""',
    ]
    for method in methods:
        lines.append("")
        lines += [f"    {line}" if line else "" for line in method]
    return "\n".join(lines)


def _features(printer: TorchModel, net) -> str:
    if printer.lowered.neck is not None:  # the head definition's channels
        return str(printer.lowered.neck.out[0])
    classes = printer.lowered.stage_classes
    if len(classes) == 1 and classes[0].expansion is not None:
        return f"{net.stages[-1].width} * {classes[0].name}.expansion"
    return str(printer.lowered.features)


def _make_layer(printer: TorchModel, kinds, generic: bool, dilated, drop, extras,
                numbered: bool = False) -> list[str]:  # fmt: skip
    lowered = printer.lowered
    classes = lowered.stage_classes
    if not generic:
        b = classes[0].name
        later = any(
            isinstance(item, Add) and item.shortcut is not None
            for stage in lowered.stages
            for block in stage.blocks[1:]
            for item in block.items
        )
        lines = ["def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:",
                 f"    outplanes = planes * {b}.expansion"]  # fmt: skip
        one = "" if classes[0].defaults.get("stride") == 1 else ", 1"  # the later blocks' stride
        if kinds:
            lines += [
                f"    layers = [{b}(self.inplanes, planes, stride, self._downsample(outplanes, stride))]",
                "    self.inplanes = outplanes",
                "    for _ in range(1, blocks):",
                (f"        layers.append({b}(self.inplanes, planes, downsample=self._downsample(outplanes, 1)))"
                 if not one else f"        layers.append({b}(self.inplanes, planes, 1, self._downsample(outplanes, 1)))")
                if later
                else f"        layers.append({b}(self.inplanes, planes{one}))",
            ]  # fmt: skip
        else:
            lines += [
                f"    layers = [{b}(self.inplanes, planes, stride)]",
                "    self.inplanes = outplanes",
                "    for _ in range(1, blocks):",
                f"        layers.append({b}(self.inplanes, planes{one}))",
            ]
        return lines + ["    return nn.Sequential(*layers)"]
    params = []
    if len(classes) > 1:
        params.append("block: type[nn.Module]")
        block = "block"
    else:
        block = classes[0].name
    params += ["planes: int", "blocks: int", "stride: int = 1"]
    many = bool(kinds) and (len(kinds) > 1 or "none" in {st.ir.shortcut for st in
                                                         lowered.stages})  # fmt: skip
    if many:
        params.append(f'shortcut: str = "{kinds[0]}"')
    if dilated:
        params.append("dilation: int = 1")
    if drop:
        params.append("drop_path: list[float] | None = None")
    for name in extras:
        cls = next(c for c in classes if name in c.variables)
        value = cls.defaults.get(name, cls.instances[0].args[name])
        params.append(f"{name}: {annotation(cls.form.params[name])} = {literal(value)}")
    lines = [f"def _make_layer(self, {', '.join(params)}) -> nn.Sequential:",
             f"    outplanes = planes * {block}.expansion"]  # fmt: skip
    if dilated:
        lines.append("    previous_dilation, self.dilation = self.dilation, dilation")
    lines += ["    layers = []", "    for i in range(blocks):",
              "        block_stride = stride if i == 0 else 1", "        options = {}"]  # fmt: skip
    if kinds:
        call = "self._downsample(outplanes, block_stride" + (
            ", shortcut)" if len(kinds) > 1 else ")"
        )
        if many:
            lines += ['        if shortcut != "none":',
                      f'            options["downsample"] = {call}']  # fmt: skip
        else:
            lines.append(f'        options["downsample"] = {call}')
    if dilated:
        lines.append('        options["dilation"] = previous_dilation if i == 0 else dilation')
    if drop:
        lines.append('        options["drop_path"] = drop_path[i] if drop_path else 0.0')
    if numbered:
        lines.append('        options["index"] = i  # the block\'s place in its stage')
    for name in extras:
        lines.append(f'        options["{name}"] = {name}')
    lines += [f"        layers.append({block}(self.inplanes, planes, block_stride, **options))",
              "        self.inplanes = outplanes", "    return nn.Sequential(*layers)"]  # fmt: skip
    return lines


# --- the whole file -----------------------------------------------------------------------------


def _byob_classes(printer: TorchModel, net) -> list[str]:
    """timm's byobnet layout: the stem as a module (`stem.conv1`), and the classifier head
    (`head.fc`)."""
    stem = printer.stem_body
    lines = ["class Stem(nn.Module):", f'    """The stem: {stem_description(printer.lowered)}."""', "",
             "    def __init__(self) -> None:", "        super().__init__()"]  # fmt: skip
    lines += [f"        {line}" for line in stem.init()]
    lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
    lines += [
        f"        {line}" for line in stem.forward if line and line not in ("AddNode", "BranchNode")
    ]
    lines.append("        return x")
    dropout = net.head.dropout
    head = [
        "class ClassifierHead(nn.Module):",
        '    """The global average pool' + (", dropout" if dropout else "") + " and the classifier "
        '`fc` (timm\'s ClassifierHead)."""',
        "",
        "    def __init__(self, features: int, num_classes: int) -> None:",
        "        super().__init__()",
        "        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))",
        *([f"        self.drop = nn.Dropout(p={dropout!r})"] if dropout else []),
        "        self.fc = nn.Linear(features, num_classes)",
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "        x = torch.flatten(self.global_pool(x), 1)",
        *(["        x = self.drop(x)"] if dropout else []),
        "        return self.fc(x)",
    ]  # fmt: skip
    return ["\n".join(lines), "\n".join(head)]


def render_model(lowered: Lowered, spec, analysis: Analysis, header: str, custom_norm: bool) -> str:
    """model.py: header, docstring, imports, helpers, block classes, ResNet, build_model."""
    net = spec.network
    printer = TorchModel(lowered, custom_norm)
    classes = [printer.block_class(cls) for cls in lowered.classes]
    resnet = _resnet(printer, net)
    if printer.byob:
        classes += _byob_classes(printer, net)
    body = "\n\n\n".join(classes + [resnet])
    helpers = _helpers(printer, net)
    imports = ["import math", ""] if "math." in body else []
    imports.append("import torch")
    if printer.used & {"ZeroPadShortcut", "LayerNorm2d"}:
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import nn")
    build = (
        f"def build_model(num_classes: int = {net.classes}) -> ResNet:\n"
        f'    """The network of {code_text(spec.path)}, initialised; `num_classes` sets its classifier\'s\n'
        '    outputs."""\n'
        "    return ResNet(num_classes)\n"
    )
    parts = [header + module_doc(lowered, spec, analysis), "\n".join(imports), *helpers, body,
             build]  # fmt: skip
    return "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"


__all__ = ["MODULES", "Named", "Var", "render_model", "walk"]
