"""model.py of the JAX backend: a Flax linen network printed from the lowered layers, one class
per block definition (as Flax's examples/imagenet), with PyTorch's padding, initialisation and
BN conventions. Module names mirror the PyTorch package's (`layer2.0.downsample.0` is
`layer2_0/downsample_0`), so the two packages hold the same network, layer for layer."""

from __future__ import annotations

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
    show,
)  # fmt: skip
from ..layers import KINDS
from ..lower import Lowered
from ..quoting import code_text
from .torch_model import _annotation, _kw, describe_shortcut, stem_description


def _pair(value) -> str:
    return f"({show(value)}, {show(value)})"


def conv(a: dict, name: str) -> str:
    kh, kw = a["kernel"]
    cout, stride, groups, dilation = a["channels"], a["stride"], a["groups"], a["dilation"]
    bias, padding = a["bias"], a["padding"]
    plain_stride = "" if stride == 1 and not isinstance(stride, Code) else f", {show(stride)}"
    if (kh, kw) == (3, 3) and not bias and padding == dilation:
        return (f"conv3x3({show(cout)}{plain_stride}{_kw('groups', groups, 1)}"
                f"{_kw('dilation', dilation, 1)}, name=\"{name}\")")  # fmt: skip
    if (kh, kw) == (1, 1) and not bias and groups == 1 and padding == 0 and dilation == 1:
        return f'conv1x1({show(cout)}{plain_stride}, name="{name}")'
    text = f"nn.Conv({show(cout)}, ({kh}, {kw}), strides={_pair(stride)}"
    text += f", padding=({_pair(padding)}, {_pair(padding)})"
    if dilation != 1 or isinstance(dilation, Code):
        text += f", kernel_dilation={_pair(dilation)}"
    if groups != 1 or isinstance(groups, Code):
        text += f", feature_group_count={show(groups)}"
    return text + f', use_bias={bias is True}, kernel_init=kaiming_normal, name="{name}")'


# kind -> the expression that applies it to `v` (a: the layer's arguments, folded)
FLAX = {
    "conv": lambda a, v, name, ctx: f"{conv(a, name)}({v})",
    "batchnorm": lambda a, v, name, ctx: (
        f"{ctx['norm']}({'scale_init=nn.initializers.zeros_init(), ' if ctx['zero'] else ''}"
        f'name="{name}")({v})'
    ),
    "relu": lambda a, v, name, ctx: f"nn.relu({v})",
    "gelu": lambda a, v, name, ctx: f"nn.gelu({v}, approximate=False)",
    "silu": lambda a, v, name, ctx: f"nn.silu({v})",
    "sigmoid": lambda a, v, name, ctx: f"nn.sigmoid({v})",
    "max_pool": lambda a, v, name, ctx: (
        f"nn.max_pool({v}, {tuple(a['kernel'])}, strides={_pair(a['stride'])}, "
        f"padding=({_pair(a['padding'])}, {_pair(a['padding'])}))"
    ),
    "avg_pool": lambda a, v, name, ctx: (
        f"avg_pool({v}, {show(a['kernel'][0])}, {show(a['stride'])}"
        f"{_kw('padding', a['padding'], 0)}{', ceil=True' if a['ceil'] is True else ''})"
    ),
    "global_avg_pool": lambda a, v, name, ctx: f"jnp.mean({v}, axis=(1, 2), keepdims=True)",
    "dropout": lambda a, v, name, ctx: (
        f"nn.Dropout({show(a['p'])}, deterministic=not {ctx['train']})({v})"
    ),
    "drop_path": lambda a, v, name, ctx: (
        f"DropPath({show(a['p'])}{', survival=True' if a['mode'] == 'survival' else ''}, "
        f"deterministic=not {ctx['train']})({v})"
    ),
    "multiply": lambda a, v, name, ctx: f"{ctx['input']} * {v}",
    "identity": lambda a, v, name, ctx: v,
    "pad_channels": lambda a, v, name, ctx: (
        f"zero_pad_shortcut({v}, {show(a['channels'])}, {show(a['stride'])})"
    ),
}
DEFAULT_NAMES = {}


class JaxWalker:
    """Prints a definition's statements as lines of a Flax `__call__`."""

    def __init__(self, emitter: JaxEmitter, folder: Folder, ctx: dict, var: str, inp: str):
        self.emitter, self.folder, self.ctx = emitter, folder, ctx
        self.var, self.inp = var, inp
        self.lines: list[str] = []
        self.started = False
        self.channels = None

    def walk(self, body) -> list[str]:
        for st in body:
            self.statement(st)
        return self.lines

    def statement(self, st) -> None:
        if isinstance(st, s.Let):
            line = fold_let(st, self.folder)
            if line is not None:
                self.lines.append(line)
        elif isinstance(st, s.If):
            taken = st.then if decided(st.condition, self.folder, "a block") else st.otherwise
            for inner in taken or ():
                self.statement(inner)
        elif isinstance(st, s.Layer):
            self.layer(st, st.label.text if st.label else None)
        elif isinstance(st, s.Group):
            index = 0
            for inner in group_layers(st.body, self.folder):
                self.layer(inner, f"{st.label.text}_{index}")
                index += 1
        elif isinstance(st, s.Branch):
            self.lines.append("BRANCH")
        elif isinstance(st, s.Add):
            self.lines.append("ADD")

    def arguments(self, st: s.Layer) -> dict | None:
        return layer_arguments(st, self.folder)

    def layer(self, st: s.Layer, name: str | None) -> None:
        kind_name = st.kind.text
        if kind_name in self.emitter.definitions.blocks:
            cls = self.emitter.sub_class(kind_name)
            fields = []
            for field_name in cls.variables:
                option = next((o for o in st.options if o.name.text == field_name), None)
                fields.append(f"{field_name}={show(self.folder.fold(option.value))}")
            fields.append(f'name="{name}"')
            self._apply(f"{cls.name}({', '.join(fields)})({self._source()})")
            return
        args = self.arguments(st)
        if args is None:
            return
        if kind_name == "identity":
            return
        if kind_name == "conv" and self.started and self.lines:
            self.lines.append("")
        ctx = dict(self.ctx, zero=kind_name == "batchnorm" and args["zero_init"] is True
                   and self.emitter.zero_init)  # fmt: skip
        self._apply(FLAX[kind_name](args, self._source(), name, ctx))

    def _source(self) -> str:
        return self.var if self.started else self.inp

    def _apply(self, expression: str) -> None:
        self.lines.append(f"{self.var} = {expression}")
        self.started = True


class JaxEmitter:
    def __init__(self, lowered: Lowered, zero_init: bool):
        self.lowered, self.zero_init = lowered, zero_init
        self.definitions = lowered.definitions
        self.classes = block_classes(lowered)
        self.stage_classes = [c for c in self.classes if c.stage_block]
        self.kinds = sorted({st.shortcut for st in lowered.network.stages if st.shortcut != "none"})

    def sub_class(self, definition: str) -> BlockClass:
        return next(c for c in self.classes if c.definition.name == definition and
                    not c.stage_block)  # fmt: skip

    def uses_train(self, cls: BlockClass) -> bool:
        return any(layer.kind in ("dropout", "drop_path") for b in cls.instances
                   for layer in b.layers()) or "drop_path" in cls.variables  # fmt: skip

    def block_class(self, cls: BlockClass) -> str:
        code = {"inplanes": "x.shape[-1]", **{v: f"self.{v}" for v in cls.variables}}
        if cls.expansion is not None:
            code["expansion"] = "self.expansion"
        folder = cls.folder(code)
        train = self.uses_train(cls)
        ctx = {"norm": "self.norm", "train": "self.train", "input": "x"}
        walker = JaxWalker(self, folder, ctx, "out", "x")
        body = walker.walk(cls.definition.body)
        lines = [f"class {cls.name}(nn.Module):", f'    """{_doc(cls)}"""', ""]
        if cls.expansion is not None:
            lines += [f"    expansion = {cls.expansion}", ""]
        fields = []
        for name in cls.variables:
            default = next(p.default for p in cls.definition.params if p.name.text == name)
            annotation = _annotation(cls.instances[0].args[name])
            if default is None:
                fields.append(f"{name}: {annotation}")
        if cls.stage_block or any("self.norm" in line for line in body):
            fields.append("norm: ModuleDef")
        for name in cls.variables:
            default = next(p.default for p in cls.definition.params if p.name.text == name)
            if default is not None:
                annotation = _annotation(cls.instances[0].args[name])
                value = Folder({}, {}).fold(default)
                value = float(value) if annotation == "float" else value
                fields.append(f"{name}: {annotation} = {literal(value)}")
        if cls.residual and len(self.kinds) > 1:
            fields.append(f'shortcut: str = "{self.kinds[0]}"')
        if train:
            fields.append("train: bool = False")
        lines += [f"    {f}" for f in fields]
        lines += ["", "    @nn.compact", "    def __call__(self, x: jax.Array) -> jax.Array:"]
        call = self.call_body(cls, body, folder)
        lines += [f"        {line}" if line else "" for line in call]
        return "\n".join(lines)

    def call_body(self, cls: BlockClass, body: list[str], folder: Folder) -> list[str]:
        if not cls.residual:
            return [line for line in body if line not in ("ADD", "BRANCH")] + ["return out"]
        out_channels = _out_channels(cls)
        out: list[str] = []
        if out_channels is not None:
            out += [f"outplanes = {out_channels}"]
        has_branch = "BRANCH" in body
        if not has_branch:
            out += ["identity = x", ""]
        after_add: list[str] = []
        seen_add = False
        for line in body:
            if line == "BRANCH":
                out += ["", "identity = x"]
                out += self.shortcut_code(cls, source="out", preact=True)
                out.append("")
            elif line == "ADD":
                if not has_branch:
                    out.append("")
                    out += self.shortcut_code(cls, source="x", preact=False)
                seen_add = True
            elif seen_add:
                after_add.append(line)
            else:
                out.append(line)
        if after_add == ["out = nn.relu(out)"]:
            return out + ["", "return nn.relu(out + identity)"]
        if after_add:
            return out + ["", "out = out + identity", *after_add, "return out"]
        return out + ["", "return out + identity"]

    def shortcut_code(self, cls: BlockClass, source: str, preact: bool) -> list[str]:
        kinds = sorted({
            block.shortcut_name for block in cls.instances if block.shortcut_name != "none"
        })  # fmt: skip
        if len(kinds) == 1:
            return self._one_shortcut(kinds[0], source)
        lines = []
        for i, kind in enumerate(kinds):
            lines.append(f'{"if" if i == 0 else "elif"} self.shortcut == "{kind}":')
            lines += [f"    {line}" for line in self._one_shortcut(kind, source) or ["pass"]]
        return lines

    def _one_shortcut(self, kind: str, source: str) -> list[str]:
        definition = self.definitions.shortcuts[kind]
        folder = Folder({"preact": self.lowered.preact},
                        {"inplanes": "x.shape[-1]", "outplanes": "outplanes",
                         "stride": "self.stride"})  # fmt: skip
        ctx = {"norm": "self.norm", "train": "self.train", "input": "x"}
        lines: list[str] = []
        body = list(definition.body)
        indent = ""
        if len(body) == 1 and isinstance(body[0], s.If) and body[0].otherwise is None:
            lines.append(f"if {show(folder.fold(body[0].condition))}:")
            body = list(body[0].then)
            indent = "    "
        layers = list(_shortcut_layers(body, folder))
        projects = any(KINDS[st.kind.text].weighted for st, _ in layers)
        read = source if projects else "x"
        count = sum(1 for st, _ in _shortcut_layers(body, folder) if st is not None)
        index = 0
        first = True
        for st, condition in _shortcut_layers(body, folder):
            if st is None:
                continue
            name = "downsample" if count == 1 else f"downsample_{index}"
            index += 1
            walker = JaxWalker(self, folder, ctx, "identity", read if first else "identity")
            args = walker.arguments(st)
            if args is None or st.kind.text == "identity":
                continue
            ctx_layer = dict(ctx, zero=False)
            text = FLAX[st.kind.text](args, read if first else "identity", name, ctx_layer)
            if condition is not None:
                lines.append(f"{indent}if {condition}:")
                lines.append(f"{indent}    identity = {text}")
                lines.append(f"{indent}else:")
                lines.append(f"{indent}    identity = {read if first else 'identity'}")
            else:
                lines.append(f"{indent}identity = {text}")
            first = False
        return lines

    # the network --------------------------------------------------------------------------------
    def stem(self) -> list[str]:
        stem = self.lowered.stem
        definition = self.definitions.stems[stem.definition]
        constants = dict(stem.args) | {"inplanes": stem.inp[0], "preact": self.lowered.preact}
        walker = JaxWalker(self, Folder(constants, {}),
                           {"norm": "norm", "train": "train", "input": "x"}, "x", "x")  # fmt: skip
        walker.started = True
        return walker.walk(definition.body)


def _shortcut_layers(body, folder: Folder):
    """(layer, runtime condition or None) pairs, constant `if`s decided."""
    for st in body:
        if isinstance(st, s.If):
            condition = folder.fold(st.condition)
            if not isinstance(condition, Code):
                yield from _shortcut_layers(st.then if condition else (st.otherwise or ()), folder)
                continue
            then = list(_shortcut_layers(st.then, folder))
            otherwise = list(_shortcut_layers(st.otherwise or (), folder))
            if len(then) != 1 or len(otherwise) != 1:
                raise EmitError("a shortcut's runtime `if` must choose between single layers")
            if otherwise[0][0].kind.text != "identity":
                raise EmitError("a shortcut's runtime `if` may only fall back to `identity`")
            yield then[0][0], condition.text
        elif isinstance(st, s.Layer):
            yield st, None


def _out_channels(cls: BlockClass) -> str | None:
    if cls.expansion is None:
        return None
    return "self.planes * self.expansion" if cls.expansion != 1 else "self.planes"


def _doc(cls: BlockClass) -> str:
    """The class's docstring: the PyTorch package's words (set by `render_model`)."""
    return getattr(cls, "docstring", cls.name)


HELPERS = {
    "conv3x3(": '''def conv3x3(features: int, strides: int = 1{g}{d}, *, name: str) -> nn.Conv:
    """3x3 convolution with padding {p}, as PyTorch pads ("SAME" differs for stride 2)."""
    return nn.Conv(
        features, (3, 3), strides=(strides, strides), padding=(({p}, {p}), ({p}, {p})){g2}{d2}, use_bias=False, kernel_init=kaiming_normal, name=name
    )''',
    "conv1x1(": '''def conv1x1(features: int, strides: int = 1, *, name: str) -> nn.Conv:
    """1x1 convolution."""
    return nn.Conv(
        features, (1, 1), strides=(strides, strides), padding="VALID", use_bias=False, kernel_init=kaiming_normal, name=name
    )''',
    "zero_pad_shortcut(": '''def zero_pad_shortcut(x: jax.Array, channels: int, strides: int) -> jax.Array:
    """Option A: the identity, subsampled by the stride, with zeros for the new channels."""
    x = x[:, ::strides, ::strides, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, channels - x.shape[-1])))''',
    "avg_pool(": '''def avg_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0, ceil: bool = False) -> jax.Array:
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
    "DropPath(": '''class DropPath(nn.Module):
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


def render_model(emitter: JaxEmitter, torch_emitter, spec, analysis, header: str) -> str:
    from .torch_model import _module_doc

    net = spec.network
    torch_emitter_classes = {c.name: c for c in torch_emitter.classes}
    for cls in torch_emitter.classes:
        torch_emitter.block_class(cls)  # fills in what the docstrings say
    for cls in emitter.classes:
        twin = torch_emitter_classes[cls.name]
        from .torch_model import Walker

        folder = twin.folder()
        built = Walker(torch_emitter, folder, Code("inplanes", 9), "out", "x").walk(
            twin.definition.body, twin
        )
        cls.docstring = torch_emitter.docstring(twin, built)
    classes = [emitter.block_class(cls) for cls in emitter.classes]
    resnet = _resnet(emitter, net, spec)
    body = "\n\n\n".join(classes + [resnet])
    doc = _module_doc(torch_emitter, spec, analysis).replace(
        " classes.\n", " classes (Flax linen).\n", 1
    )
    nhwc = ", ".join(map(str, (net.input[1], net.input[2], net.input[0])))
    doc = doc[:-3] + (
        f"\nImages are NHWC float32 ([N, {nhwc}]); shapes above are channels x height x width.\n"
        'Variables are {"params", "batch_stats"}; module names mirror the PyTorch package\'s '
        '(weights.py).\n"""'
    )
    mode = net.init.mode
    grouped = "groups=" in body or "feature_group_count" in body
    fan = ("in_channels / groups" if grouped else "in_channels") if mode == "fan_in" else (
        "out_channels"
    )  # fmt: skip
    prelude = f'''from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

ModuleDef = Any

# He et al.'s init: untruncated normal, std sqrt(2 / fan), as PyTorch's
# kaiming_normal_(mode="{mode}"); fan = kh * kw * {fan}.
kaiming_normal = nn.initializers.variance_scaling(2.0, "{mode}", "normal")


def uniform(bound: float) -> Callable[..., jax.Array]:
    """U(-bound, bound): PyTorch's nn.Linear initialisation with bound 1 / sqrt(in_features)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init'''
    helpers = []
    for marker, text in HELPERS.items():
        if marker not in body:
            continue
        if marker == "conv3x3(":
            chunks = [c.split(")(", 1)[0] for c in body.split("conv3x3(")[1:]]
            grouped = any("groups=" in c for c in chunks)
            dilated = any("dilation=" in c for c in chunks)
            text = text.format(
                g=", groups: int = 1" if grouped else "",
                d=", dilation: int = 1" if dilated else "",
                p="dilation" if dilated else "1",
                g2=", feature_group_count=groups" if grouped else "",
                d2=", kernel_dilation=(dilation, dilation)" if dilated else "",
            ).replace("padding ((dilation", "padding ((dilation")
            if dilated:
                text = text.replace("with padding dilation,", "with padding `dilation`,")
        helpers.append(text)
    input_nhwc = (net.input[1], net.input[2], net.input[0])
    tail = f'''def build_model() -> ResNet:
    """The network of {code_text(spec.path)}."""
    return ResNet()


def init_variables(seed: int = 0) -> dict[str, Any]:
    """{{"params", "batch_stats"}} of a newly initialised network, from `jax.random.key(seed)`."""
    images = jnp.zeros((1, {", ".join(map(str, input_nhwc))}), jnp.float32)
    return build_model().init(jax.random.key(seed), images)


def logits(variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """Eval mode (BN uses its running averages, no dropout): [N, H, W, C] float32 -> [N, {net.classes}].

    Runs op by op; `jax.jit(logits)` compiles it, worth it for repeated calls.
    """
    return build_model().apply(variables, images)
'''
    parts = [header + doc, prelude, *helpers, body, tail]
    return "\n\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def _resnet(emitter: JaxEmitter, net, spec) -> str:
    lowered = emitter.lowered
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
        f"        # PyTorch's BatchNorm2d(momentum={bn.momentum!r}, eps={bn.eps!r}); Flax's momentum is 1 - PyTorch's",
        f"        norm = partial(nn.BatchNorm, use_running_average=not train, momentum={momentum!r}, epsilon={bn.eps!r})",
        "",
        f"        # stem: {stem_description(lowered)}",
    ]  # fmt: skip
    lines += [f"        {line}" for line in emitter.stem() if line not in ("ADD", "BRANCH")]
    total = sum(st.blocks for st in net.stages)
    if net.drop_path:
        lines += ["", f"        # stochastic depth: block l of {total} is dropped with probability "
                  f"{net.drop_path:g} * l / {total}",
                  f"        rates = [{net.drop_path!r} * i / {total} for i in range(1, {total + 1})]"]  # fmt: skip
    first = 0
    dilation = 1
    for stage in lowered.stages:
        st = stage.ir
        cls = next(c for c in emitter.stage_classes if stage.blocks[0] in c.instances)
        out = "x".join(map(str, stage.out))
        lines += ["", f"        # {stage.attr} ({st.name}): {out}"]
        head = [str(st.width), "norm"]
        common = []
        if "shortcut" in _fields(emitter, cls):
            common.append(f'shortcut="{st.shortcut}"')
        for name in cls.variables:
            if name in ("planes", "stride", "dilation", "drop_path"):
                continue
            common.append(f"{name}={literal(stage.blocks[0].args[name])}")
        if emitter.uses_train(cls):
            common.append("train=train")
        first_args = list(head)
        if st.stride > 1:
            first_args.append(f"stride={st.stride}")
        rest_args = list(head)
        if "dilation" in cls.variables:
            if dilation != 1:
                first_args.append(f"dilation={dilation}")
            if st.dilation != 1:
                rest_args.append(f"dilation={st.dilation}")
        if "drop_path" in cls.variables:
            first_args.append(f"drop_path=rates[{first}]")
            rest_args.append(f"drop_path=rates[{first} + i]")
        first_args += common
        rest_args += common
        lines.append(f'        x = {cls.name}({", ".join(first_args)}, name="{stage.attr}_0")(x)')
        if st.blocks > 1:
            lines.append(f"        for i in range(1, {st.blocks}):")
            lines.append(
                f'            x = {cls.name}({", ".join(rest_args)}, name=f"{stage.attr}_{{i}}")(x)'
            )
        first += st.blocks
        dilation = st.dilation
    if lowered.preact:
        lines += ["", '        x = norm(name="bn_final")(x)', "        x = nn.relu(x)"]
    lines += ["", "        if features_only:", "            return x", "",
              "        x = jnp.mean(x, axis=(1, 2))  # global average pool"]  # fmt: skip
    if net.head.dropout:
        lines.append(f"        x = nn.Dropout({net.head.dropout!r}, deterministic=not train)(x)")
    lines += [
        "        bound = x.shape[-1] ** -0.5",
        '        x = nn.Dense(self.num_classes, kernel_init=uniform(bound), bias_init=uniform(bound), name="fc")(x)',
        "        return x",
    ]  # fmt: skip
    return "\n".join(lines)


def _fields(emitter: JaxEmitter, cls: BlockClass) -> set[str]:
    return {"shortcut"} if cls.residual and len(emitter.kinds) > 1 else set()


__all__ = ["JaxEmitter", "describe_shortcut", "render_model"]
