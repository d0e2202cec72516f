"""model.py of the JAX backend: a Flax linen network printed from the lowered network, one class
per block class (as Flax's examples/imagenet), with PyTorch's padding, initialisation and BN
conventions. Module names mirror the PyTorch package's (`layer2.0.downsample.0` is
`layer2_0/downsample_0`), so the two packages hold the same network, layer for layer. It prints
the forms of `lower.py` and decides nothing about the network."""

from __future__ import annotations

import re
from itertools import takewhile

from ...analysis import Analysis
from ...forms import (
    BlockClass,
    CallNode,
    EachNode,
    GroupNode,
    KeepNode,
    LayerNode,
    LetNode,
    WhenNode,
    guard,
    walk,
)
from ...layers import KINDS
from ...lower import Lowered
from ...names import python_name, shortcut_attribute
from ...quoting import code_text
from ...symbolic import apply, literal, negated, symbolic, text
from ..common import annotation, class_doc, module_doc, speller, stage_extras, stem_description


def _kw(name: str, value, default, spell) -> str:
    if value == default and not symbolic(value):
        return ""
    return f", {name}={text(value, spell)}"


def _pair(value, spell) -> str:
    return f"({text(value, spell)}, {text(value, spell)})"


def _conv(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    spell = ctx["spell"]
    kh, kw = a["kernel"]
    cout, stride, groups, dilation = a["channels"], a["stride"], a["groups"], a["dilation"]
    bias, padding = a["bias"], a["padding"]
    plain_stride = "" if stride == 1 and not symbolic(stride) else f", {text(stride, spell)}"
    if (kh, kw) == (3, 3) and not bias and padding == dilation:
        p.used.add("conv3x3")
        p.conv3x3_groups |= groups != 1 or symbolic(groups)
        p.conv3x3_dilation |= dilation != 1 or symbolic(dilation)
        return (f"conv3x3({text(cout, spell)}{plain_stride}{_kw('groups', groups, 1, spell)}"
                f'{_kw("dilation", dilation, 1, spell)}, name="{name}")({v})')  # fmt: skip
    if (kh, kw) == (1, 1) and not bias and groups == 1 and padding == 0 and dilation == 1:
        p.used.add("conv1x1")
        return f'conv1x1({text(cout, spell)}{plain_stride}, name="{name}")({v})'
    out = f"nn.Conv({text(cout, spell)}, ({text(kh, spell)}, {text(kw, spell)}), "
    out += f"strides={_pair(stride, spell)}"
    out += f", padding=({_pair(padding, spell)}, {_pair(padding, spell)})"
    if dilation != 1 or symbolic(dilation):
        out += f", kernel_dilation={_pair(dilation, spell)}"
    if groups != 1 or symbolic(groups):
        out += f", feature_group_count={text(groups, spell)}"
    return out + f', use_bias={bias is True}, kernel_init=kaiming_normal, name="{name}")({v})'


def _norm(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    zero = "scale_init=nn.initializers.zeros_init(), " if ctx["zero"] else ""
    return f'{ctx["norm"]}({zero}name="{name}")({v})'


def _group_norm(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    # epsilon always: Flax's default is 1e-6, PyTorch's 1e-5
    zero = "scale_init=nn.initializers.zeros_init(), " if ctx["zero"] else ""
    spell = ctx["spell"]
    return (f"nn.GroupNorm(num_groups={text(a['groups'], spell)}, epsilon={text(a['eps'], spell)}, "
            f'{zero}name="{name}")({v})')  # fmt: skip


def _layer_norm(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    # epsilon always: Flax's default is 1e-6, PyTorch's 1e-5
    return f'nn.LayerNorm(epsilon={text(a["eps"], ctx["spell"])}, name="{name}")({v})'


def _channel_conv(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    # the channels as a sequence of one feature, [N, 1, 1, C] -> [N, C, 1]; PyTorch's default
    # Conv1d init (timm leaves it), U(-1/sqrt(size), 1/sqrt(size))
    spell = ctx["spell"]
    size = text(a["size"], spell)
    padding = text(apply("//", apply("-", a["size"], 1), 2), spell)
    return (f"nn.Conv(1, ({size},), padding=(({padding}, {padding}),), use_bias=False, "
            f'kernel_init=uniform({size} ** -0.5), name="{name}")'
            f"({v}.reshape({v}.shape[0], -1, 1)).reshape({v}.shape[0], 1, 1, -1)")  # fmt: skip


def _linear(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    channels = text(a["channels"], ctx["spell"])
    return (f"nn.Dense({channels}, kernel_init=uniform({v}.shape[-1] ** -0.5), "
            f'bias_init=uniform({v}.shape[-1] ** -0.5), name="{name}")({v})')  # fmt: skip


def _pool(a: dict, v: str, ctx: dict) -> str:
    spell = ctx["spell"]
    kernel = f"({text(a['kernel'][0], spell)}, {text(a['kernel'][1], spell)})"
    return (f"nn.max_pool({v}, {kernel}, strides={_pair(a['stride'], spell)}, "
            f"padding=({_pair(a['padding'], spell)}, {_pair(a['padding'], spell)}))")  # fmt: skip


def _avg_pool(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    spell = ctx["spell"]
    if a["count_include_pad"] is True:  # Flax's own average (ceil is refused with it)
        kernel = f"({text(a['kernel'][0], spell)}, {text(a['kernel'][1], spell)})"
        return (f"nn.avg_pool({v}, {kernel}, strides={_pair(a['stride'], spell)}, "
                f"padding=({_pair(a['padding'], spell)}, {_pair(a['padding'], spell)}))")  # fmt: skip
    p.used.add("avg_pool")
    ceil = ", ceil=True" if a["ceil"] is True else ""
    return (f"avg_pool({v}, {text(a['kernel'][0], spell)}, {text(a['stride'], spell)}"
            f"{_kw('padding', a['padding'], 0, spell)}{ceil})")  # fmt: skip


def _drop_path(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    p.used.add("DropPath")
    survival = ", survival=True" if a["mode"] == "survival" else ""
    return (
        f"DropPath({text(a['p'], ctx['spell'])}{survival}, deterministic=not {ctx['train']})({v})"
    )


def _pad_channels(p: JaxModel, a: dict, v: str, name: str, ctx: dict) -> str:
    p.used.add("zero_pad_shortcut")
    spell = ctx["spell"]
    return f"zero_pad_shortcut({v}, {text(a['channels'], spell)}, {text(a['stride'], spell)})"


def _split(a: dict, v: str, ctx: dict) -> str:
    parts, groups = text(a["parts"], ctx["spell"]), a["groups"]
    if groups == 1:
        return f"{v}.reshape(*{v}.shape[:-1], {parts}, -1)"
    # G groups of N parts each -> N parts of G groups
    return (f"{v}.reshape(*{v}.shape[:-1], {text(groups, ctx['spell'])}, {parts}, -1)"
            f".swapaxes(-3, -2).reshape(*{v}.shape[:-1], {parts}, -1)")  # fmt: skip


def _concat(node) -> bool:
    return isinstance(node, LayerNode) and node.kind == "concat"


def _value(a: dict, ctx: dict) -> str:
    """A value `multiply` and `add` read: the input, the part before (in `each`), or a kept one."""
    if a["value"] == "previous":
        return "parts[-1]"
    return ctx["input"] if a["value"] == "input" else python_name(ctx["spell"](a["value"]))


# the axes of a value: [N, H, W, C], or [N, H, W, PARTS, C] once split
AXES = {"parts": "-2", "positions": "(1, 2)", "channels": "-1"}

# kind -> the expression that applies it to `v` (a: the layer's arguments)
CALLS = {
    "conv": _conv,
    "linear": _linear,
    "channel_conv": _channel_conv,
    "batchnorm": _norm,
    "groupnorm": _group_norm,
    "layernorm": _layer_norm,
    "relu": lambda p, a, v, name, ctx: f"nn.relu({v})",
    "gelu": lambda p, a, v, name, ctx: f"nn.gelu({v}, approximate=False)",
    "silu": lambda p, a, v, name, ctx: f"nn.silu({v})",
    "sigmoid": lambda p, a, v, name, ctx: f"nn.sigmoid({v})",
    "max_pool": lambda p, a, v, name, ctx: _pool(a, v, ctx),
    "avg_pool": _avg_pool,
    "global_avg_pool": lambda p, a, v, name, ctx: f"jnp.mean({v}, axis=(1, 2), keepdims=True)",
    "dropout": lambda p, a, v, name, ctx: (
        f"nn.Dropout({text(a['p'], ctx['spell'])}, deterministic=not {ctx['train']})({v})"
    ),
    "drop_path": _drop_path,
    "multiply": lambda p, a, v, name, ctx: f"{_value(a, ctx)} * {v}",
    "add": lambda p, a, v, name, ctx: f"{v} + {_value(a, ctx)}",
    "split": lambda p, a, v, name, ctx: _split(a, v, ctx),
    "concat": lambda p, a, v, name, ctx: f"{v}.reshape(*{v}.shape[:-2], -1)",
    "sum": lambda p, a, v, name, ctx: (
        f"{v}.sum(axis=-2)"
        if a["axis"] == "parts"
        else f"{v}.sum(axis={AXES[a['axis']]}, keepdims=True)"
    ),  # fmt: skip
    "softmax": lambda p, a, v, name, ctx: f"jax.nn.softmax({v}, axis={AXES[a['axis']]})",
    "identity": lambda p, a, v, name, ctx: v,
    "pad_channels": _pad_channels,
}


class _Body:
    """A form's nodes as lines of a Flax `__call__`."""

    def __init__(self, printer: JaxModel, ctx: dict, var: str, inp: str, started: bool = False):
        self.printer, self.ctx = printer, ctx
        self.spell = ctx["spell"]
        self.var, self.inp = var, inp
        self.started = started
        self.lines: list[str] = []
        self.index: str | None = None  # inside `each`: the part's number

    def nodes(self, nodes) -> list[str]:
        nodes = list(nodes)
        for number, node in enumerate(nodes):
            if number and isinstance(nodes[number - 1], EachNode) and _concat(node):
                continue  # joined by the `each` before it
            if isinstance(node, LetNode):
                self.lines.append(f"{self.spell(node.name)} = {text(node.value, self.spell)}")
            elif isinstance(node, LayerNode):
                self.layer(node, self._name(node.attr, node.labelled))
            elif isinstance(node, GroupNode):
                for inner in node.nodes:
                    if isinstance(inner, LetNode):
                        self.lines.append(
                            f"{self.spell(inner.name)} = {text(inner.value, self.spell)}"
                        )
                    else:
                        self.layer(inner, self._name(f"{node.attr}_{inner.attr}", True))
            elif isinstance(node, CallNode):
                self.call(node)
            elif isinstance(node, KeepNode):
                self.lines.append(f"{python_name(self.spell(node.name))} = {self._source()}")
            elif isinstance(node, EachNode):
                following = nodes[number + 1] if number + 1 < len(nodes) else None
                self.each(node, joined=_concat(following))
            elif isinstance(node, WhenNode):
                self.when(node)
            elif type(node).__name__ in ("BranchNode", "AddNode"):
                self.lines.append(type(node).__name__)
        return self.lines

    def when(self, node: WhenNode) -> None:
        """An `if` on a value of the block (or the part's number, inside `each`)."""
        if not self.started:  # a side that builds nothing leaves the input
            self.lines.append(f"{self.var} = {self.inp}")
            self.started = True
        sides = []
        for nodes in (node.then, node.otherwise):
            side = _Body(self.printer, self.ctx, self.var, self.inp, started=True)
            side.index = self.index
            sides.append(side.nodes(nodes))
        then, otherwise = sides
        if then:
            self.lines.append(f"if {text(node.condition, self.spell)}:")
            self.lines += [f"    {line}" if line else "" for line in then]
            if len(node.otherwise) == 1 and isinstance(node.otherwise[0], WhenNode) and (
                    otherwise and otherwise[0].startswith("if ")):  # fmt: skip
                self.lines += ["el" + otherwise[0], *otherwise[1:]]  # else: if ... -> elif ...
                return
            if otherwise:
                self.lines.append("else:")
        elif otherwise:
            self.lines.append(f"if {text(negated(node.condition), self.spell)}:")
        self.lines += [f"    {line}" if line else "" for line in otherwise]

    def each(self, node: EachNode, joined: bool = False) -> None:
        """`each`: a loop over the parts; a layer named NAME inside is NAME_0, NAME_1, ..."""
        index = python_name(self.spell(node.name))

        def spell(name: str) -> str:
            return index if name == node.name else self.spell(name)

        inner = _Body(self.printer, dict(self.ctx, spell=spell), "part", "part", started=True)
        inner.index = index
        inner.nodes(node.nodes)
        if self.started and self.lines:
            self.lines.append("")
        self.lines += ["parts = []", f"for {index} in range({text(node.count, self.spell)}):",
                       f"    part = {self._source()}[..., {index}, :]"]  # fmt: skip
        self.lines += [f"    {line}" if line else "" for line in inner.lines]
        self.lines.append("    parts.append(part)")
        self._apply("jnp.concatenate(parts, axis=-1)" if joined else "jnp.stack(parts, axis=-2)")
        self.lines.append("")

    def _name(self, name: str, labelled: bool) -> str:
        """A layer's module name: inside `each`, NAME_{i} for part i (an f-string's body)."""
        if self.index is not None and labelled:
            return f"{name}_{{{self.index}}}"
        return name

    def call(self, node: CallNode) -> None:
        cls = self.printer.lowered.layer_class(node.definition)
        fields = [f"{cls.spelling[name]}={text(node.args[name], self.spell)}"
                  for name in cls.variables]  # fmt: skip
        if self.printer.needs_norm(cls):
            fields.append(f"norm={self.ctx['norm']}")
        if self.printer.uses_train(cls):
            fields.append(f"train={self.ctx['train']}")
        fields.append(f'name="{self._name(node.attr, True)}"')
        self._apply(f"{cls.name}({', '.join(fields)})({self._source()})")

    def layer(self, node: LayerNode, name: str) -> None:
        if node.kind == "identity":
            return
        if node.kind == "conv" and self.started and self.lines:
            self.lines.append("")
        zero = node.args.get("zero_init") is True and self.printer.zero_init
        ctx = dict(self.ctx, zero=zero)
        self._apply(CALLS[node.kind](self.printer, node.args, self._source(), name, ctx))

    def _source(self) -> str:
        return self.var if self.started else self.inp

    def _apply(self, expression: str) -> None:
        if self.index is not None:  # names made per part: f-strings
            expression = re.sub(r'name="([^"]*\{[^"]*)"', r'name=f"\1"', expression)
        self.lines.append(f"{self.var} = {expression}")
        self.started = True


class JaxModel:
    def __init__(self, lowered: Lowered, zero_init: bool):
        self.lowered, self.zero_init = lowered, zero_init
        self.batchnorm = "batchnorm" in lowered.kinds
        self.used: set[str] = set()  # the helpers the printed code calls
        self.conv3x3_groups = self.conv3x3_dilation = False
        self.kinds = sorted({st.shortcut for st in lowered.network.stages if st.shortcut != "none"})

    def uses_train(self, cls: BlockClass) -> bool:
        """A class whose layers (or whose blocks used as layers) differ in training."""
        return self._holds(cls, lambda node: KINDS[node.kind].random, self.uses_train)

    def needs_norm(self, cls: BlockClass) -> bool:
        """A class of stages (of a network with BN), or one with a BN (or whose blocks used as
        layers have one): it is given the network's `norm`."""
        return (cls.role == "stage" and self.batchnorm) or self._holds(
            cls, lambda node: node.kind == "batchnorm", self.needs_norm)  # fmt: skip

    def _holds(self, cls: BlockClass, test, again) -> bool:
        for node in walk(cls.form.nodes):
            if isinstance(node, LayerNode) and test(node):
                return True
            if isinstance(node, CallNode) and again(self.lowered.layer_class(node.definition)):
                return True
        return False

    def block_class(self, cls: BlockClass) -> str:
        own = {"inplanes": "x.shape[-1]"}
        own |= {name: f"self.{cls.spelling[name]}" for name in cls.variables}
        if cls.expansion is not None:
            own["expansion"] = "self.expansion"
        spell = speller(cls, own)
        ctx = {"norm": "self.norm", "train": "self.train", "input": "x", "spell": spell}
        body = _Body(self, ctx, "out", "x").nodes(cls.form.nodes)
        lines = [f"class {cls.name}(nn.Module):", f'    """{class_doc(cls)}"""', ""]
        if cls.expansion is not None:
            lines += [f"    expansion = {cls.expansion}", ""]
        fields = []
        for name in cls.variables:
            if name not in cls.defaults:
                fields.append(f"{cls.spelling[name]}: {annotation(cls.form.params[name])}")
        if self.needs_norm(cls):
            fields.append("norm: ModuleDef")
        for name in cls.variables:
            if name in cls.defaults:
                fields.append(f"{cls.spelling[name]}: {annotation(cls.form.params[name])} = "
                              f"{literal(cls.defaults[name])}")  # fmt: skip
        if cls.residual and len(self.kinds) > 1:
            fields.append(f'shortcut: str = "{self.kinds[0]}"')
        if self.uses_train(cls):
            fields.append("train: bool = False")
        lines += [f"    {f}" for f in fields]
        lines += ["", "    @nn.compact", "    def __call__(self, x: jax.Array) -> jax.Array:"]
        lines += [f"        {line}" if line else "" for line in self.call_body(cls, body, spell)]
        return "\n".join(lines)

    def call_body(self, cls: BlockClass, body: list[str], spell) -> list[str]:
        if not cls.residual:
            lines = [line for line in body if line not in ("AddNode", "BranchNode")]
            started = any(line.startswith("out = ") for line in lines)
            return lines + ([] if started else ["out = x"]) + ["return out"]
        out = [f"outplanes = {text(cls.form.resolved(cls.form.out), spell)}"]
        has_branch = "BranchNode" in body
        if not has_branch:
            out += ["identity = x", ""]
        after_add: list[str] = []
        seen_add = started = False
        for line in body:
            if line == "BranchNode":
                out += ["", "identity = x"]
                out += self.shortcut_code(cls, source="out" if started else "x")
                out.append("")
            elif line == "AddNode":
                if not has_branch:
                    out.append("")
                    out += self.shortcut_code(cls, source="x")
                seen_add = True
            elif seen_add:
                after_add.append(line)
            else:
                out.append(line)
                started = started or line.startswith("out = ")
        main = "out" if started else "x"
        if after_add == ["out = nn.relu(out)"]:
            return out + ["", f"return nn.relu({main} + identity)"]
        if after_add:
            return out + ["", f"out = {main} + identity", *after_add, "return out"]
        return out + ["", f"return {main} + identity"]

    def shortcut_code(self, cls: BlockClass, source: str) -> list[str]:
        kinds = sorted({b.shortcut_name for b in cls.instances if b.shortcut_name != "none"})
        if len(kinds) == 1:
            return self._one_shortcut(cls, kinds[0], source)
        lines = []
        for i, kind in enumerate(kinds):
            lines.append(f'{"if" if i == 0 else "elif"} self.shortcut == "{kind}":')
            lines += [f"    {line}" for line in self._one_shortcut(cls, kind, source) or ["pass"]]
        return lines

    def _one_shortcut(self, cls: BlockClass, kind: str, source: str) -> list[str]:
        form = self.lowered.shortcut_forms[kind]
        stride = text(cls.form.params.get("stride", 1), speller(cls, {
            name: f"self.{cls.spelling[name]}" for name in cls.variables}))  # fmt: skip
        own = {"inplanes": "x.shape[-1]", "outplanes": "outplanes", "stride": stride}

        def spell(name: str) -> str:
            return own.get(name, name)

        ctx = {"norm": "self.norm", "train": "self.train", "input": "x", "spell": spell,
               "zero": False}  # fmt: skip
        lines: list[str] = []
        nodes = list(form.nodes)
        indent = ""
        guarded = guard(form)
        if guarded is not None:
            lets, when = guarded
            lines += [f"{spell(n.name)} = {text(n.value, spell)}" for n in lets]
            lines.append(f"if {text(when.condition, spell)}:")
            nodes = list(when.then)
            indent = "    "
        layers = [n for n in nodes if isinstance(n, LayerNode | WhenNode | CallNode)]
        projects = any(
            isinstance(layer, CallNode) or KINDS[layer.kind].weighted
            for n in layers
            for layer in ((n,) if not isinstance(n, WhenNode) else (*n.then, *n.otherwise))
        )
        read = source if projects else "x"
        current, index = read, 0
        for node in nodes:
            if isinstance(node, LetNode):
                lines.append(f"{indent}{spell(node.name)} = {text(node.value, spell)}")
                continue
            base = shortcut_attribute(self.lowered.network.layout)
            name = base if len(layers) == 1 else f"{base}_{index}"
            index += 1
            if isinstance(node, CallNode):  # a block used as the shortcut
                block = self.lowered.layer_class(node.definition)
                fields = [
                    f"{block.spelling[n]}={text(node.args[n], spell)}" for n in block.variables
                ]
                if self.needs_norm(block):
                    fields.append("norm=self.norm")
                fields.append(f'name="{name}"')
                lines.append(f"{indent}identity = {block.name}({', '.join(fields)})({current})")
            elif isinstance(node, WhenNode):  # one layer or another, by a value of the block
                then, otherwise = node.then[0], node.otherwise[0]
                lines.append(f"{indent}if {text(node.condition, spell)}:")
                lines.append(f"{indent}    identity = {self._layer(then, current, name, ctx)}")
                lines.append(f"{indent}else:")
                lines.append(f"{indent}    identity = {self._layer(otherwise, current, name, ctx)}")
            elif node.kind == "identity":
                continue
            else:
                lines.append(f"{indent}identity = {self._layer(node, current, name, ctx)}")
            current = "identity"
        return lines

    def _layer(self, node: LayerNode, source: str, name: str, ctx: dict) -> str:
        return CALLS[node.kind](self, node.args, source, name, ctx)

    # the network --------------------------------------------------------------------------------
    def stem(self, own: bool = False) -> list[str]:
        """The stem's lines: in the network's `__call__`, or (`own`) in a `Stem` module."""
        prefix = "self." if own else ""
        ctx = {"norm": f"{prefix}norm", "train": f"{prefix}train", "input": "x", "spell": str}
        return _Body(self, ctx, "x", "x", started=True).nodes(self.lowered.stem_form.nodes)

    def neck(self) -> list[str]:
        """A head definition's lines, after the stages."""
        ctx = {"norm": "norm", "train": "train", "input": "x", "spell": str}
        return _Body(self, ctx, "x", "x", started=True).nodes(self.lowered.neck_form.nodes)

    def byob_classes(self, net) -> list[str]:
        """timm's byobnet layout: the stem as a module (`stem/conv1`), and the classifier head
        (`head/fc`)."""
        kinds = {layer.kind for layer in self.lowered.stem.layers()}
        norm, train = "batchnorm" in kinds, any(KINDS[k].random for k in kinds)
        lines = ["class Stem(nn.Module):",
                 f'    """The stem: {stem_description(self.lowered)}."""', ""]  # fmt: skip
        lines += [*(["    norm: ModuleDef"] if norm else []),
                  *(["    train: bool = False"] if train else [])]  # fmt: skip
        lines += ["", "    @nn.compact", "    def __call__(self, x: jax.Array) -> jax.Array:"]
        lines += [f"        {line}" if line else "" for line in self.stem(own=True)
                  if line not in ("AddNode", "BranchNode")]  # fmt: skip
        lines.append("        return x")
        self.stem_fields = [*(["norm=norm"] if norm else []), *(["train=train"] if train else [])]
        dropout = net.head.dropout
        head = [
            "class ClassifierHead(nn.Module):",
            '    """The global average pool' + (", dropout" if dropout else "") + " and the "
            'classifier `fc` (timm\'s ClassifierHead)."""',
            "",
            "    num_classes: int",
            "",
            "    @nn.compact",
            "    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:",
            "        x = jnp.mean(x, axis=(1, 2))  # global average pool",
            *([f"        x = nn.Dropout({dropout!r}, deterministic=not train)(x)"] if dropout
              else []),
            "        bound = x.shape[-1] ** -0.5",
            '        return nn.Dense(self.num_classes, kernel_init=uniform(bound), bias_init=uniform(bound), name="fc")(x)',
        ]  # fmt: skip
        return ["\n".join(lines), "\n".join(head)]


HELPERS = {
    "conv3x3": '''def conv3x3(features: int, strides: int = 1{g}{d}, *, name: str) -> nn.Conv:
    """3x3 convolution with padding {p}, as PyTorch pads ("SAME" differs for stride 2)."""
    return nn.Conv(
        features, (3, 3), strides=(strides, strides), padding=(({p}, {p}), ({p}, {p})){g2}{d2}, use_bias=False, kernel_init=kaiming_normal, name=name
    )''',
    "conv1x1": '''def conv1x1(features: int, strides: int = 1, *, name: str) -> nn.Conv:
    """1x1 convolution."""
    return nn.Conv(
        features, (1, 1), strides=(strides, strides), padding="VALID", use_bias=False, kernel_init=kaiming_normal, name=name
    )''',
    "zero_pad_shortcut": '''def zero_pad_shortcut(x: jax.Array, channels: int, strides: int) -> jax.Array:
    """Option A: the identity, subsampled by the stride, with zeros for the new channels."""
    x = x[:, ::strides, ::strides, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, channels - x.shape[-1])))''',
    "avg_pool": '''def avg_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0, ceil: bool = False) -> jax.Array:
    """PyTorch's AvgPool2d(kernel, stride, padding, ceil_mode=ceil, count_include_pad=False): a
    window that runs past an edge averages the pixels it covers."""
    pads = []
    for size in x.shape[1:3]:
        span = size + 2 * padding - kernel
        out = (-(-span // stride) if ceil else span // stride) + 1
        if ceil and (out - 1) * stride >= size + padding:
            out -= 1
        pads.append((padding, max(0, (out - 1) * stride + kernel - size - padding)))
    return nn.avg_pool(x, (kernel, kernel), strides=(stride, stride), padding=pads, count_include_pad=False)''',
    "DropPath": '''class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's residual branch is dropped with probability
    `p` (an rng named "dropout"). Kept branches are scaled by 1 / (1 - p) (as timm), or with
    `survival`, left as they are in training and scaled by 1 - p in evaluation (Huang et al.)."""

    p: float = 0.0
    survival: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        keep = 1.0 - self.p
        if self.deterministic:
            return x * keep if self.survival else x
        if self.p == 0.0:
            return x
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * mask if self.survival else x * mask / keep''',
}


def render_model(lowered: Lowered, spec, analysis: Analysis, header: str) -> str:
    net = spec.network
    printer = JaxModel(lowered, net.init.zero_init_residual)
    classes = [printer.block_class(cls) for cls in lowered.classes]
    byob = net.layout == "byobnet"
    if byob:
        classes += printer.byob_classes(net)
    resnet = _resnet(printer, net)
    body = "\n\n\n".join(classes + [resnet])
    mode = net.init.mode
    grouped = printer.conv3x3_groups or "feature_group_count" in body
    fan = ("in_channels / groups" if grouped else "in_channels") if mode == "fan_in" else (
        "out_channels"
    )  # fmt: skip
    partial = "from functools import partial\n" if printer.batchnorm else ""
    module_def = "\nModuleDef = Any\n" if "ModuleDef" in body else ""
    math = "import math\n" if "math." in body else ""
    prelude = f'''{math}from collections.abc import Callable
{partial}from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
{module_def}
# He et al.'s init: untruncated normal, std sqrt(2 / fan), as PyTorch's
# kaiming_normal_(mode="{mode}"); fan = kh * kw * {fan}.
kaiming_normal = nn.initializers.variance_scaling(2.0, "{mode}", "normal")


def uniform(bound: float) -> Callable[..., jax.Array]:
    """U(-bound, bound): PyTorch's nn.Linear initialisation with bound 1 / sqrt(in_features)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init'''
    helpers = []
    for name, code in HELPERS.items():
        if name not in printer.used:
            continue
        if name == "conv3x3":
            grouped, dilated = printer.conv3x3_groups, printer.conv3x3_dilation
            code = code.format(
                g=", groups: int = 1" if grouped else "",
                d=", dilation: int = 1" if dilated else "",
                p="dilation" if dilated else "1",
                g2=", feature_group_count=groups" if grouped else "",
                d2=", kernel_dilation=(dilation, dilation)" if dilated else "",
            )
            if dilated:
                code = code.replace("with padding dilation,", "with padding `dilation`,")
        helpers.append(code)
    input_nhwc = (net.input[1], net.input[2], net.input[0])
    collections = '{"params", "batch_stats"}' if printer.batchnorm else '{"params"}'
    tail = f'''def build_model(num_classes: int = {net.classes}) -> ResNet:
    """The network of {code_text(spec.path)}; `num_classes` sets its classifier's outputs."""
    return ResNet(num_classes=num_classes)


def init_variables(seed: int = 0, num_classes: int = {net.classes}) -> dict[str, Any]:
    """{collections} of a newly initialised network, from `jax.random.key(seed)`."""
    images = jnp.zeros((1, {", ".join(map(str, input_nhwc))}), jnp.float32)
    return build_model(num_classes).init(jax.random.key(seed), images)


def logits(variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """Eval mode (BN uses its running averages, no dropout): [N, H, W, C] float32 -> [N, classes].

    Runs op by op; `jax.jit(logits)` compiles it, worth it for repeated calls.
    """
    classes = variables["params"]{'["head"]' if byob else ""}["fc"]["bias"].shape[0]
    return build_model(classes).apply(variables, images)
'''
    doc = module_doc(lowered, spec, analysis, flax=True)
    parts = [header + doc, prelude, *helpers, body, tail]
    return "\n\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def _resnet(printer: JaxModel, net) -> str:
    lowered = printer.lowered
    bn = net.batchnorm
    momentum = round(1.0 - bn.momentum, 12)
    lines = [
        "class ResNet(nn.Module):",
        f'    """{net.name}, built as the spec says: NHWC images in, logits out."""',
        "",
        f"    num_classes: int = {net.classes}",
        "",
        "    @nn.compact",
        "    def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False) -> jax.Array:",
        '        """Logits; with `features_only`, the last feature map before the pool."""',
    ]  # fmt: skip
    if printer.batchnorm:
        lines += [
            f"        # PyTorch's BatchNorm2d(momentum={bn.momentum!r}, eps={bn.eps!r}); Flax's momentum is 1 - PyTorch's",
            f"        norm = partial(nn.BatchNorm, use_running_average=not train, momentum={momentum!r}, epsilon={bn.eps!r})",
            "",
        ]  # fmt: skip
    lines.append(f"        # stem: {stem_description(lowered)}")
    if net.layout == "byobnet":
        fields = [*printer.stem_fields, 'name="stem"']
        lines.append(f"        x = Stem({', '.join(fields)})(x)")
    else:
        lines += [f"        {line}" for line in printer.stem()
                  if line not in ("AddNode", "BranchNode")]  # fmt: skip
    total = sum(st.blocks for st in net.stages)
    if net.drop_path:
        lines += ["", f"        # stochastic depth: block l of {total} is dropped with probability "
                  f"{net.drop_path:g} * l / {total}",
                  f"        rates = [{net.drop_path!r} * i / {total} for i in range(1, {total + 1})]"]  # fmt: skip
    extras = stage_extras(lowered)
    first = 0
    dilation = 1
    for stage in lowered.stages:
        st, cls = stage.ir, stage.cls
        out = "x".join(map(str, stage.out))
        lines += ["", f"        # {stage.attr} ({st.name}): {out}"]
        head = [str(st.width), *(["norm"] if printer.needs_norm(cls) else [])]
        common = []
        if cls.residual and len(printer.kinds) > 1:
            common.append(f'shortcut="{st.shortcut}"')
        for name in cls.variables:
            if name in extras:
                common.append(f"{cls.spelling[name]}={literal(stage.blocks[0].args[name])}")
        if printer.uses_train(cls):
            common.append("train=train")
        first_args = list(head)
        if st.stride > 1:
            first_args.append(f"stride={st.stride}")
        rest_args = list(head)
        if cls.defaults.get("stride") != 1:
            first_args += [] if st.stride > 1 else ["stride=1"]
            rest_args.append("stride=1")
        if "dilation" in cls.variables:
            if dilation != 1:
                first_args.append(f"dilation={dilation}")
            if st.dilation != 1:
                rest_args.append(f"dilation={st.dilation}")
        if "drop_path" in cls.variables:
            first_args.append(f"drop_path=rates[{first}]")
            rest_args.append(f"drop_path=rates[{first} + i]")
        if "index" in cls.variables:  # the block's place in its stage
            first_args.append("index=0")
            rest_args.append("index=i")
        first_args += common
        rest_args += common
        attr = stage.attr.replace(".", "_")  # stages.0 -> stages_0_0, ... (byobnet's names)
        lines.append(f'        x = {cls.name}({", ".join(first_args)}, name="{attr}_0")(x)')
        if st.blocks > 1:
            lines.append(f"        for i in range(1, {st.blocks}):")
            lines.append(
                f'            x = {cls.name}({", ".join(rest_args)}, name=f"{attr}_{{i}}")(x)'
            )
        first += st.blocks
        dilation = st.dilation
    if lowered.neck_form is not None:  # a head definition's layers before the pool
        lines.append("")
        lines += [f"        {line}" if line else "" for line in printer.neck()]
    pre = list(takewhile(lambda node: node.kind != "global_avg_pool", lowered.head_form))
    if pre:
        lines.append("")
        ctx = {"norm": "norm", "train": "train", "input": "x", "spell": str, "zero": False}
        for node in pre:
            lines.append(f"        x = {printer._layer(node, 'x', node.attr, ctx)}")
    lines += ["", "        if features_only:", "            return x", ""]
    if net.layout == "byobnet":
        lines += ['        return ClassifierHead(self.num_classes, name="head")(x, train)']
        return "\n".join(lines)
    for node in lowered.head_form:
        if node.kind == "global_avg_pool":
            lines.append("        x = jnp.mean(x, axis=(1, 2))  # global average pool")
        elif node.kind == "dropout":
            lines.append(f"        x = nn.Dropout({node.args['p']!r}, deterministic=not train)(x)")
        elif node.kind == "linear":
            lines += [
                "        bound = x.shape[-1] ** -0.5",
                f'        x = nn.Dense(self.num_classes, kernel_init=uniform(bound), bias_init=uniform(bound), name="{node.attr}")(x)',
            ]  # fmt: skip
    lines.append("        return x")
    return "\n".join(lines)


__all__ = ["CALLS", "JaxModel", "render_model"]
