"""model.py of the PyTorch backend, printed from the lowered network: one class per block
definition (as torchvision's `BasicBlock` and `Bottleneck`), and a `ResNet` that builds its stages
in a loop (`_make_layer`) with its shortcuts made by `_downsample`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import syntax as s
from ..classes import (
    BlockClass,
    Code,
    EmitError,
    Folder,
    block_classes,
    decided,
    fold_let,
    group_layers,
    layer_arguments,
    literal,
    negate_expr,
    shortcut_reads,
    show,
)
from ..lower import Add, Block, Lowered
from ..quoting import code_text
from ..summary import giga

# Attribute names of layers no one named (parameter-free ones are shared, as torchvision's relu).
DEFAULT_ATTRS = {"max_pool": "maxpool", "avg_pool": "avgpool", "global_avg_pool": "pool"}


def _kw(name: str, value, default) -> str:
    return "" if value == default and not isinstance(value, Code) else f", {name}={show(value)}"


def conv(a: dict, custom_norm: bool) -> str:
    kh, kw = a["kernel"]
    cin, cout = show(a["in"]), show(a["channels"])
    stride, groups, dilation = a["stride"], a["groups"], a["dilation"]
    bias, padding = a["bias"], a["padding"]
    default_padding = a["dilation"] if isinstance(a["dilation"], Code) else None
    if (kh, kw) == (3, 3) and not bias and (padding == dilation or padding == default_padding):
        text = f"conv3x3({cin}, {cout}"
        text += f", {show(stride)}" if stride != 1 or isinstance(stride, Code) else ""
        return text + _kw("groups", groups, 1) + _kw("dilation", dilation, 1) + ")"
    if (kh, kw) == (1, 1) and not bias and groups == 1 and padding == 0 and dilation == 1:
        stride_text = f", {show(stride)}" if stride != 1 or isinstance(stride, Code) else ""
        return f"conv1x1({cin}, {cout}{stride_text})"
    kernel = kh if kh == kw else f"({kh}, {kw})"
    text = f"nn.Conv2d({cin}, {cout}, kernel_size={kernel}" + _kw("stride", stride, 1)
    text += _kw("padding", padding, 0) + _kw("dilation", dilation, 1) + _kw("groups", groups, 1)
    return text + ("" if bias else ", bias=False") + ")"


def _pool(module: str, a: dict, extra: str = "") -> str:
    kh, kw = a["kernel"]
    kernel = kh if kh == kw else f"({kh}, {kw})"
    return (f"nn.{module}(kernel_size={show(kernel)}, stride={show(a['stride'])}"
            f"{_kw('padding', a['padding'], 0)}{extra})")  # fmt: skip


# kind -> the module that builds it (a: the layer's arguments, folded; "in": input channels)
TORCH = {
    "conv": conv,
    "batchnorm": lambda a, custom: f"{'norm' if custom else 'nn.BatchNorm2d'}({show(a['in'])})",
    "relu": lambda a, custom: "nn.ReLU(inplace=True)",
    "gelu": lambda a, custom: "nn.GELU()",
    "silu": lambda a, custom: "nn.SiLU(inplace=True)",
    "sigmoid": lambda a, custom: "nn.Sigmoid()",
    "max_pool": lambda a, custom: _pool("MaxPool2d", a),
    "avg_pool": lambda a, custom: _pool(
        "AvgPool2d",
        a,
        (", ceil_mode=True" if a["ceil"] is True else "") + ", count_include_pad=False",
    ),  # fmt: skip
    "global_avg_pool": lambda a, custom: "nn.AdaptiveAvgPool2d(1)",
    "dropout": lambda a, custom: f"nn.Dropout(p={show(a['p'])})",
    "drop_path": lambda a, custom: (
        f"DropPath({show(a['p'])}{', survival=True' if a['mode'] == 'survival' else ''})"
    ),
    "identity": lambda a, custom: "nn.Identity()",
    "pad_channels": lambda a, custom: (
        f"ZeroPadShortcut({_minus(a['channels'], a['in'])}, {show(a['stride'])})"
    ),
    "linear": lambda a, custom: f"nn.Linear({show(a['in'])}, {show(a['channels'])})",
}
# kind -> how forward applies it to `v` when it is not a module call
TORCH_FORWARD = {
    "global_avg_pool": lambda v, x: f"{v}.mean((2, 3), keepdim=True)",
    "multiply": lambda v, x: f"{x} * {v}",
}


def _minus(a, b) -> str:
    if not isinstance(a, Code) and not isinstance(b, Code):
        return str(a - b)
    return f"{show(a)} - {show(b)}"


@dataclass
class Built:
    """What walking a definition gives: constructor lines, forward lines, attributes."""

    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)  # attribute -> its constructor
    channels: object = None
    zero_init: list[str] = field(default_factory=list)
    identity_at_branch: bool = False
    strided: list[str] = field(default_factory=list)  # the layers that take `stride`


class Walker:
    """Prints a definition's statements as PyTorch: `self.NAME = ...` lines and forward lines."""

    def __init__(self, emitter: TorchEmitter, folder: Folder, channels, var: str, inp: str):
        self.emitter, self.folder = emitter, folder
        self.built = Built(channels=channels)
        self.var, self.inp = var, inp  # the value being computed, and the block's input
        self.started = False

    def walk(self, body, cls: BlockClass | None = None) -> Built:
        for st in body:
            self.statement(st, cls)
        return self.built

    def statement(self, st, cls) -> None:
        if isinstance(st, s.Let):
            line = fold_let(st, self.folder)
            if line is not None:
                self.built.init.append(line)
        elif isinstance(st, s.If):
            taken = st.then if decided(st.condition, self.folder, "a block") else st.otherwise
            for inner in taken or ():
                self.statement(inner, cls)
        elif isinstance(st, s.Layer):
            self.layer(st, cls)
        elif isinstance(st, s.Group):
            parts = []
            for inner in group_layers(st.body, self.folder):
                text = self.constructor(inner)
                if text is not None:
                    parts.append(text)
            self._assign(st.label.text, "nn.Sequential(" + ", ".join(parts) + ")")
            self._call(st.label.text)
        elif isinstance(st, s.Branch):
            self.built.forward.append("BRANCH")
        elif isinstance(st, s.Add):
            self.built.forward.append("ADD")

    def arguments(self, st: s.Layer) -> dict | None:
        args = layer_arguments(st, self.folder)
        if args is not None:
            args["in"] = self.built.channels
        return args

    def constructor(self, st: s.Layer) -> str | None:
        """The module of a layer inside a group (its channels tracked)."""
        args = self.arguments(st)
        if args is None:
            return None
        if "channels" in args and st.kind.text in ("conv", "linear"):
            self.built.channels = args["channels"]
        return TORCH[st.kind.text](args, self.emitter.custom_norm)

    def layer(self, st: s.Layer, cls) -> None:
        kind_name = st.kind.text
        if kind_name in self.emitter.definitions.blocks:
            self.sub_block(st)
            return
        args = self.arguments(st)
        if args is None:
            return
        if kind_name in TORCH_FORWARD:
            self._apply(TORCH_FORWARD[kind_name](self._source(), self.inp))
            return
        if "stride" in args and isinstance(args["stride"], Code) and st.label is not None:
            self.built.strided.append(st.label.text)
        text = TORCH[kind_name](args, self.emitter.custom_norm)
        if kind_name in ("conv", "linear"):
            self.built.channels = args["channels"]
        attr = st.label.text if st.label is not None else DEFAULT_ATTRS.get(kind_name, kind_name)
        if st.label is None and self.built.attrs.get(attr, text) != text:
            attr = f"{attr}{sum(1 for a in self.built.attrs if a.startswith(attr)) + 1}"
        if kind_name == "batchnorm" and args["zero_init"] is True:
            self.built.zero_init.append(attr)
        if kind_name == "conv" and self.started and self.built.forward:
            self.built.forward.append("")
        self._assign(attr, text)
        self._call(attr)

    def sub_block(self, st: s.Layer) -> None:
        cls = self.emitter.class_of(st.label.text, st.kind.text)
        args = [show(self.built.channels)]
        for name in cls.variables:
            option = next((o for o in st.options if o.name.text == name), None)
            value = self.folder.fold(option.value) if option is not None else None
            args.append(f"{name}={show(value)}")
        self._assign(st.label.text, f"{cls.name}({', '.join(args)})")
        self._call(st.label.text)

    def _assign(self, attr: str, text: str) -> None:
        if attr in self.built.attrs:
            return
        self.built.attrs[attr] = text
        self.built.init.append(f"self.{attr} = {text}")

    def _source(self) -> str:
        return self.var if self.started else self.inp

    def _call(self, attr: str) -> None:
        self._apply(f"self.{attr}({self._source()})")

    def _apply(self, expression: str) -> None:
        self.built.forward.append(f"{self.var} = {expression}")
        self.started = True


class TorchEmitter:
    def __init__(self, lowered: Lowered, custom_norm: bool):
        self.lowered, self.custom_norm = lowered, custom_norm
        self.definitions = lowered.definitions
        self.classes = block_classes(lowered)
        self.stage_classes = [c for c in self.classes if c.stage_block]

    def class_of(self, name: str, definition: str) -> BlockClass:
        return next(c for c in self.classes if c.definition.name == definition and not
                    c.stage_block)  # fmt: skip

    # block classes ------------------------------------------------------------------------------
    def block_class(self, cls: BlockClass) -> str:
        folder = cls.folder()
        walker = Walker(self, folder, Code("inplanes", 9), "out", "x")
        built = walker.walk(cls.definition.body, cls)
        cls.zero_init = built.zero_init
        cls.strided = built.strided
        args = ["inplanes: int"]
        for name in cls.variables:
            default = next(p.default for p in cls.definition.params if p.name.text == name)
            annotation = _annotation(cls.instances[0].args[name])
            if default is None:
                args.append(f"{name}: {annotation}")
            else:
                value = Folder({}, {}).fold(default)
                value = float(value) if annotation == "float" else value
                args.append(f"{name}: {annotation} = {literal(value)}")
            if name == "stride" and cls.residual:
                args.append("downsample: nn.Module | None = None")
        if cls.residual and "stride" not in cls.variables:
            args.append("downsample: nn.Module | None = None")
        lines = [f"class {cls.name}(nn.Module):", f'    """{self.docstring(cls, built)}"""', ""]
        if cls.expansion is not None:
            lines += [f"    expansion = {cls.expansion}", ""]
        lines.append(f"    def __init__(self, {', '.join(args)}) -> None:")
        lines.append("        super().__init__()")
        lines += [f"        {line}" for line in built.init]
        if cls.residual:
            lines.append("        self.downsample = downsample")
        lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
        lines += [f"        {line}" if line else "" for line in self.forward(cls, built)]
        return "\n".join(lines)

    def forward(self, cls: BlockClass, built: Built) -> list[str]:
        lines: list[str] = []
        reads = shortcut_reads(cls)
        if cls.residual and "BRANCH" not in built.forward:
            lines += ["identity = x", ""]
        for line in built.forward:
            if line in ("BRANCH", "ADD") and not cls.residual:
                continue
            if line == "BRANCH":
                source = {"x": "x", "branch": "out",
                          "mixed": "x if isinstance(self.downsample, ZeroPadShortcut) else out"}[reads]  # fmt: skip
                lines.append(
                    f"identity = x if self.downsample is None else self.downsample({source})"
                )
            elif line == "ADD":
                if "BRANCH" not in built.forward:
                    lines += ["", "if self.downsample is not None:",
                              "    identity = self.downsample(x)", ""]  # fmt: skip
                else:
                    lines.append("")
                lines.append("out += identity")
            else:
                lines.append(line)
        lines.append("return out")
        return lines

    def docstring(self, cls: BlockClass, built: Built) -> str:
        names = []
        for line in built.forward:
            if line in ("ADD", "BRANCH") or not line:
                if line == "ADD":
                    break
                continue
            names.append(line)
        parts = [_describe(self.definitions, st, cls) for st in _main_layers(cls, self)]
        f = ", ".join(p for p in parts if p)
        after = _after_add(cls.definition.body)
        if cls.residual:
            formula = "relu(x + F(x))" if "relu" in after else "x + F(x)"
        else:
            formula = "relu(F(x)), no shortcut" if "relu" in after else "F(x)"
            if not cls.stage_block:
                formula = "F(x)"
        text = f"{formula}, F = {f}." if f else f"{formula}."
        kernels = {st.kernel.values for st, _ in _main_layers(cls, self)
                   if isinstance(st, s.Layer) and st.kind.text == "conv" and st.kernel}  # fmt: skip
        if len(built.strided) == 1 and len(kernels) > 1:
            conv = next(st for st, _ in _main_layers(cls, self)
                        if st.label is not None and st.label.text == built.strided[0])  # fmt: skip
            kernel = "x".join(map(str, conv.kernel.values)) if conv.kernel else ""
            text += f"\n\n    The stride sits on the {kernel} conv ({built.strided[0]}).\n    "
        return text

    # the network --------------------------------------------------------------------------------
    def stem(self) -> tuple[list[str], list[str], Built]:
        stem = self.lowered.stem
        definition = self.definitions.stems[stem.definition]
        constants = dict(stem.args) | {"inplanes": stem.inp[0], "preact": self.lowered.preact}
        walker = Walker(self, Folder(constants, {}), stem.inp[0], "x", "x")
        walker.started = True
        built = walker.walk(definition.body)
        return built.init, built.forward, built

    def shortcut_method(self, name: str, method: str) -> list[str]:
        definition = self.definitions.shortcuts[name]
        folder = Folder({"preact": self.lowered.preact},
                        {"inplanes": "self.inplanes", "outplanes": "outplanes",
                         "stride": "stride"})  # fmt: skip
        body = list(definition.body)
        lines = [f"def {method}(self, outplanes: int, stride: int) -> nn.Module | None:",
                 f'    """{_shortcut_doc(name)}"""']  # fmt: skip
        if len(body) == 1 and isinstance(body[0], s.If) and body[0].otherwise is None:
            condition = folder.fold(negate_expr(body[0].condition))
            lines += [f"    if {show(condition)}:", "        return None"]
            body = list(body[0].then)
        modules = []
        channels = Code("self.inplanes", 9)
        for st in body:
            modules.extend(self._shortcut_modules(st, folder, channels))
            for st_ in [st] if isinstance(st, s.Layer) else []:
                if st_.kind.text in ("conv", "linear"):
                    channels = Code("outplanes", 9)
        modules = [m for m in modules if m]
        if not modules:
            lines.append("    return None")
        elif len(modules) == 1:
            lines.append(f"    return {modules[0]}")
        else:
            lines.append(f"    return nn.Sequential({', '.join(modules)})")
        return lines

    def _shortcut_modules(self, st, folder: Folder, channels) -> list[str]:
        walker = Walker(self, folder, channels, "x", "x")
        if isinstance(st, s.If):
            condition = folder.fold(st.condition)
            if not isinstance(condition, Code):
                out = []
                for inner in st.then if condition else (st.otherwise or ()):
                    out += self._shortcut_modules(inner, folder, channels)
                return out
            then = [m for inner in st.then for m in self._shortcut_modules(inner, folder,
                                                                             channels)]  # fmt: skip
            otherwise = [m for inner in st.otherwise or ()
                         for m in self._shortcut_modules(inner, folder, channels)]  # fmt: skip
            if len(then) != 1 or len(otherwise) != 1:
                raise EmitError("a shortcut's runtime `if` must choose between single layers")
            return [f"{then[0]} if {condition.text} else {otherwise[0]}"]
        if isinstance(st, s.Layer):
            return [walker.constructor(st)]
        if isinstance(st, s.Let):
            walker.statement(st, None)
        return []


def _annotation(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, tuple):
        return "tuple[int, int]"
    return "str"


def _main_layers(cls: BlockClass, emitter: TorchEmitter):
    """The layers of F: those before the add, with `if`s decided for the class."""
    folder = cls.folder()
    out = []

    def walk(body):
        for st in body:
            if isinstance(st, s.Add):
                return False
            if isinstance(st, s.If):
                condition = folder.fold(st.condition)
                if isinstance(condition, Code):
                    continue
                if walk(st.then if condition else (st.otherwise or ())) is False:
                    return False
            elif isinstance(st, s.Let):
                value = folder.fold(st.value)
                if not isinstance(value, Code):
                    folder.constants[st.name.text] = value
            elif isinstance(st, s.Layer | s.Group):
                out.append((st, folder))
        return True

    walk(cls.definition.body)
    return out


def _describe(definitions, item, cls) -> str:
    st, folder = item
    if isinstance(st, s.Group):
        return st.label.text
    kind = st.kind.text
    if kind in definitions.blocks:
        return f"{st.label.text if st.label else kind} ({kind.replace('_', ' ')})"
    if kind == "conv":
        k = "x".join(map(str, st.kernel.values)) if st.kernel else ""
        return f"{k} conv"
    if kind in ("dropout", "drop_path"):
        rate = folder.fold(st.arg) if st.arg is not None else 0
        if rate == 0:
            return ""
        return "dropout" if kind == "dropout" else "drop path"
    return {"batchnorm": "BN", "relu": "ReLU", "gelu": "GELU", "silu": "SiLU",
            "sigmoid": "sigmoid", "max_pool": "max pool", "avg_pool": "average pool",
            "global_avg_pool": "global average pool", "multiply": "gate"}.get(kind, kind)  # fmt: skip


def _after_add(body) -> list[str]:
    seen, after = False, []
    for st in body:
        if isinstance(st, s.Add):
            seen = True
        elif seen and isinstance(st, s.Layer):
            after.append(st.kind.text)
    return after


def _shortcut_doc(name: str) -> str:
    return {
        "A": "Option A: subsampled and zero-padded where the shape changes; else None (identity).",
        "B": "Option B: a 1x1 projection where the shape changes; else None (identity).",
        "C": "Option C: a 1x1 projection on every shortcut.",
        "D": "ResNet-D: average pool, 1x1 projection where the shape changes; else None "
        "(identity).",
    }.get(name, f"Shortcut {name}; None is the identity.")


__all__ = ["Add", "Block", "TorchEmitter"]


# --- the whole file -----------------------------------------------------------------------------


def render_model(emitter: TorchEmitter, spec, analysis, header: str) -> str:
    """model.py: header, docstring, imports, helpers, block classes, ResNet, build_model."""
    net = spec.network
    classes = [emitter.block_class(cls) for cls in emitter.classes]
    resnet = _resnet(emitter, net)
    body = "\n\n\n".join(classes + [resnet])
    helpers = _helpers(emitter, body, net)
    imports = ["import torch"]
    if "F." in body or "F." in "".join(helpers):
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import nn")
    build = (
        "def build_model() -> ResNet:\n"
        f'    """The network of {code_text(spec.path)}, initialised."""\n'
        "    return ResNet()\n"
    )
    parts = [header + _module_doc(emitter, spec, analysis), "\n".join(imports), *helpers, body,
             build]  # fmt: skip
    return "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def _module_doc(emitter: TorchEmitter, spec, analysis) -> str:
    net, lowered = spec.network, emitter.lowered
    residual = any(block.residual for block in lowered.blocks())
    lines = [
        f"{net.name}: a {analysis.depth}-layer {'residual' if residual else 'plain'} network for "
        f"{'x'.join(map(str, net.input))} images and {net.classes} classes.",
        "",
        f"Stem ({net.stem.name}): {stem_description(lowered)}.",
        "Stages:",
    ]
    for stage, part in zip(lowered.stages, analysis.stages):
        st = stage.ir
        cls = next(c for c in emitter.stage_classes if stage.blocks[0] in c.instances)
        extra = f", stride {st.stride}" if st.stride > 1 else ""
        extra += f", dilation {st.dilation}" if st.dilation > 1 else ""
        lines.append(
            f"    {stage.attr} ({st.name}): {st.blocks} x {cls.name}({st.width}){extra} -> "
            f"{'x'.join(map(str, part.out))}"
        )
    kinds = sorted({st.shortcut for st in net.stages})
    lines.append("Shortcuts: " + "; ".join(describe_shortcut(k) for k in kinds) + ".")
    if net.drop_path:
        lines.append(
            f"Stochastic depth: block l of {sum(st.blocks for st in net.stages)} drops its "
            f"residual branch with probability {net.drop_path:g} * l / L."
        )
    dropout = f", dropout {net.head.dropout:g}" if net.head.dropout else ""
    pre = "BN, ReLU, " if lowered.preact else ""
    lines.append(f"Head: {pre}global average pool{dropout}, {net.classes}-way fully connected.")
    lines.append(
        f"{analysis.params:,} parameters, {analysis.macs:,} multiply-adds ({giga(analysis.macs)})."
    )
    return '"""' + "\n".join(lines) + '\n"""'


def describe_shortcut(kind: str) -> str:
    return {
        "A": "option A: identity, subsampled and zero-padded where the shape changes",
        "B": "option B: a 1x1 projection where the shape changes, identity elsewhere",
        "C": "option C: a 1x1 projection on every shortcut",
        "D": "average pool, then a 1x1 projection where the shape changes (ResNet-D)",
        "none": "none (plain blocks)",
    }.get(kind, f"`{kind}` (defined in the spec)")


def stem_description(lowered: Lowered) -> str:
    parts = []
    for item in lowered.stem.items:
        layers = item.layers if hasattr(item, "layers") and not isinstance(item, Block) else (item,)
        for layer in layers:
            parts.append(_layer_text(layer))
    return ", ".join(p for p in parts if p)


def _layer_text(layer) -> str:
    a = layer.args
    if layer.kind in ("conv", "max_pool", "avg_pool"):
        k = "x".join(map(str, a["kernel"]))
        stride = f"/{a['stride']}" if a.get("stride", 1) > 1 else ""
        what = {"conv": f"conv ({a.get('channels')})", "max_pool": "max pool",
                "avg_pool": "average pool"}[layer.kind]  # fmt: skip
        return f"{k}{stride} {what}"
    return {"batchnorm": "BN", "relu": "ReLU", "gelu": "GELU", "silu": "SiLU",
            "sigmoid": "sigmoid"}.get(layer.kind, layer.kind)  # fmt: skip


HELPERS = {
    "conv3x3(": '''def conv3x3(in_planes: int, out_planes: int, stride: int = 1{g}{d}) -> nn.Conv2d:
    """3x3 convolution with padding."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding={p}{g2}{d2}, bias=False
    )''',
    "conv1x1(": '''def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)''',
    "norm(": '''def norm(channels: int) -> nn.BatchNorm2d:
    """Batch normalisation with the spec's momentum and epsilon."""
    return nn.BatchNorm2d(channels, eps={eps}, momentum={momentum})''',
    "ZeroPadShortcut(": '''class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by the stride, with zeros for the new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))''',
    "DropPath(": '''class DropPath(nn.Module):
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


def _helpers(emitter: TorchEmitter, body: str, net) -> list[str]:
    out = []
    for marker, text in HELPERS.items():
        if marker not in body:
            continue
        if marker == "conv3x3(":
            grouped = "groups=" in body.split("conv3x3(", 1)[1] or _uses_kw(body, "groups")
            dilated = _uses_kw(body, "dilation")
            text = text.format(
                g=", groups: int = 1" if grouped else "",
                d=", dilation: int = 1" if dilated else "",
                p="dilation" if dilated else "1",
                g2=", groups=groups" if grouped else "",
                d2=", dilation=dilation" if dilated else "",
            )
        elif marker == "norm(":
            text = text.format(eps=repr(net.batchnorm.eps), momentum=repr(net.batchnorm.momentum))
        out.append(text)
    return out


def _uses_kw(body: str, name: str) -> bool:
    return any(f"{name}=" in chunk.split(")", 1)[0] for chunk in body.split("conv3x3(")[1:])


def _resnet(emitter: TorchEmitter, net) -> str:
    lowered = emitter.lowered
    stem_init, stem_forward, stem_built = emitter.stem()
    stage_classes = emitter.stage_classes
    kinds = sorted({st.shortcut for st in net.stages if st.shortcut != "none"})
    dilated = any(st.dilation != 1 for st in net.stages)
    drop = net.drop_path > 0
    extras = sorted({v for c in stage_classes for v in c.variables} -
                    {"planes", "stride", "dilation", "drop_path"})  # fmt: skip
    many = bool(kinds) and (len(kinds) > 1 or "none" in {st.shortcut for st in net.stages})
    generic = len(stage_classes) > 1 or many or dilated or drop or bool(extras)
    init = [
        f"def __init__(self, num_classes: int = {net.classes}) -> None:",
        "    super().__init__()",
        f"    self.inplanes = {lowered.stem.out[0]}",
    ]
    if dilated:
        init.append("    self.dilation = 1")
    init.append(f"    # stem: {stem_description(lowered)}")
    init += [f"    {line}" for line in stem_init]
    init.append("")
    if drop:
        total = sum(st.blocks for st in net.stages)
        init.append(f"    # stochastic depth: block l of {total} is dropped with probability "
                    f"{net.drop_path:g} * l / {total}")  # fmt: skip
        init.append(f"    rates = [{net.drop_path!r} * i / {total} for i in range(1, {total + 1})]")
    first = 0
    for stage in lowered.stages:
        st = stage.ir
        cls = next(c for c in stage_classes if stage.blocks[0] in c.instances)
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
        init.append(
            f"    self.{stage.attr} = self._make_layer({', '.join(args)})  # {st.name}: {out}"
        )
    head_attrs = stem_built.attrs
    if lowered.preact:
        bn = "norm" if emitter.custom_norm else "nn.BatchNorm2d"
        init.append(f"    self.bn_final = {bn}({lowered.features})")
        if "relu" not in head_attrs:
            init.append("    self.relu = nn.ReLU(inplace=True)")
    init.append("    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))")
    if net.head.dropout:
        init.append(f"    self.dropout = nn.Dropout(p={net.head.dropout!r})")
    features = (
        f"{net.stages[-1].width} * {stage_classes[0].name}.expansion"
        if len(stage_classes) == 1 and stage_classes[0].expansion is not None
        else str(lowered.features)
    )
    init.append(f"    self.fc = nn.Linear({features}, num_classes)")
    init += [
        "",
        "    for m in self.modules():",
        "        if isinstance(m, nn.Conv2d):",
        f'            nn.init.kaiming_normal_(m.weight, mode="{net.init.mode}", nonlinearity="relu")',
        "        elif isinstance(m, nn.BatchNorm2d):",
        "            nn.init.ones_(m.weight)",
        "            nn.init.zeros_(m.bias)",
    ]
    zero = [c for c in stage_classes if getattr(c, "zero_init", None) and c.residual]
    if net.init.zero_init_residual and zero:
        init += ["", "    # Zero-initialise the last BN of each residual branch: every block starts "
                 "as the identity.", "    for m in self.modules():"]  # fmt: skip
        for i, c in enumerate(zero):
            init.append(f"        {'if' if i == 0 else 'elif'} isinstance(m, {c.name}):")
            init += [f"            nn.init.zeros_(m.{attr}.weight)" for attr in c.zero_init]
    methods = [init, _make_layer(emitter, kinds, generic, dilated, drop, extras)]
    if kinds:
        if len(kinds) == 1:
            methods.append(emitter.shortcut_method(kinds[0], "_downsample"))
        else:
            names = {k: f"_shortcut_{k.lower()}" for k in kinds}
            table = ", ".join(f'"{k}": self.{names[k]}' for k in kinds)
            methods.append([
                "def _downsample(self, outplanes: int, stride: int, shortcut: str) -> nn.Module | None:",
                '    """The shortcut of a block, by its stage\'s option; None is the identity."""',
                f"    return {{{table}}}[shortcut](outplanes, stride)",
            ])  # fmt: skip
            for k in kinds:
                methods.append(emitter.shortcut_method(k, names[k]))
    forward_features = ["def forward_features(self, x: torch.Tensor) -> torch.Tensor:"]
    forward_features += [f"    {line}" for line in stem_forward if line not in ("ADD", "BRANCH")]
    forward_features.append("")
    forward_features += [f"    x = self.{stage.attr}(x)" for stage in lowered.stages]
    if lowered.preact:
        forward_features += ["", "    x = self.bn_final(x)", "    x = self.relu(x)"]
    forward_features.append("    return x")
    forward = [
        "def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "    x = self.forward_features(x)",
        "    x = self.avgpool(x)",
        "    x = torch.flatten(x, 1)",
    ]
    if net.head.dropout:
        forward.append("    x = self.dropout(x)")
    forward += ["    x = self.fc(x)", "    return x"]
    methods += [forward_features, forward]
    lines = [
        "class ResNet(nn.Module):",
        f'    """{net.name}, built as the spec says; `forward_features` ends before the pool."""',
    ]
    for method in methods:
        lines.append("")
        lines += [f"    {line}" if line else "" for line in method]
    return "\n".join(lines)


def _make_layer(emitter: TorchEmitter, kinds, generic: bool, dilated, drop, extras) -> list[str]:
    classes = emitter.stage_classes
    if not generic:
        cls = classes[0]
        b = cls.name
        later = any(
            isinstance(item, Add) and item.shortcut is not None
            for stage in emitter.lowered.stages
            for block in stage.blocks[1:]
            for item in block.items
        )
        lines = ["def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:",
                 f"    outplanes = planes * {b}.expansion"]  # fmt: skip
        if kinds:
            lines += [
                f"    layers = [{b}(self.inplanes, planes, stride, self._downsample(outplanes, stride))]",
                "    self.inplanes = outplanes",
                "    for _ in range(1, blocks):",
                f"        layers.append({b}(self.inplanes, planes, downsample=self._downsample(outplanes, 1)))"
                if later
                else f"        layers.append({b}(self.inplanes, planes))",
            ]  # fmt: skip
        else:
            lines += [
                f"    layers = [{b}(self.inplanes, planes, stride)]",
                "    self.inplanes = outplanes",
                "    for _ in range(1, blocks):",
                f"        layers.append({b}(self.inplanes, planes))",
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
                                                         emitter.lowered.stages})  # fmt: skip
    if many:
        params.append(f'shortcut: str = "{kinds[0]}"')
    if dilated:
        params.append("dilation: int = 1")
    if drop:
        params.append("drop_path: list[float] | None = None")
    for name in extras:
        cls = next(c for c in classes if name in c.variables)
        params.append(f"{name}: {_annotation(cls.instances[0].args[name])} = "
                      f"{literal(cls.constants.get(name, cls.instances[0].args[name]))}")  # fmt: skip
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
    for name in extras:
        lines.append(f'        options["{name}"] = {name}')
    lines += [f"        layers.append({block}(self.inplanes, planes, block_stride, **options))",
              "        self.inplanes = outplanes", "    return nn.Sequential(*layers)"]  # fmt: skip
    return lines
