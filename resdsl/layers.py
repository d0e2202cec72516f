"""The primitive layers: each kind's arguments, channel and shape rules, cost and readings, in
one place.

A kind of layer is a `Kind`: which arguments it takes (a kernel size `KxK`, one positional value,
`, name value` options), the channels it gives (on symbolic values too: `planes * 4`), how it
changes a concrete (channels, height, width) shape, how many parameters and multiply-adds it
costs, and how it reads in a class docstring (`doc`) and in `resdsl show` (`short`). Each backend
prints every kind from a table keyed by the kind's name (`backends/torch/model.py`'s `MODULES`,
`backends/jax/model.py`'s `CALLS`); a test asserts that the three sets of names are equal.
docs/adding-a-layer.md tells how to add one.

Counts follow torchvision: parameters are trainable tensors (BN running statistics are buffers);
multiply-adds count convolutions and fully connected layers (bias adds are not counted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .symbolic import apply, constant, symbolic

Shape = tuple[int, int, int]  # channels, height, width


class LayerError(Exception):
    """A layer that cannot be built with these arguments at this shape; the message says why."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


class Option(NamedTuple):
    """An argument: `kind` is whole (>= 1) | count (>= 0) | probability | positive (a number
    > 0) | flag | word (one of `choices`) | name (of a value kept with `keep`);
    `default` None: required (or, for stride and padding, derived from the kernel)."""

    kind: str
    default: object = None
    choices: tuple[str, ...] = ()


def _same_channels(args: dict, channels):
    return channels


def _no_cost(args: dict, inp: Shape, out: Shape) -> int:
    return 0


class Kind(NamedTuple):
    name: str
    summary: str
    doc: Callable[[dict], str]  # in a class docstring: `3x3 conv`, `BN`
    short: Callable[[dict], str]  # in `resdsl show`: `3x3/2 conv 128`
    kernel: bool = False  # takes `KxK` (or a whole number for a square kernel)
    positional: str | None = None  # the name the one positional value binds to
    options: dict[str, Option] = {}
    channels: Callable[[dict, object], object] = _same_channels  # channels out, from channels in
    spatial: Callable[[dict, Shape], tuple[int, int]] = lambda args, shape: shape[1:]
    params: Callable[[dict, Shape, Shape], int] = _no_cost
    macs: Callable[[dict, Shape, Shape], int] = _no_cost
    # a layer with this argument at 0 does nothing and is left out (dropout 0, drop_path 0)
    vanishes_at_zero: str | None = None
    weighted: bool = False  # has parameters: needs a name (it becomes a state_dict key)
    gate: bool = False  # combines its value with a kept one (`multiply`, `add`): no shape rule
    random: bool = False  # draws random numbers in training
    on_parts: bool = False  # reads a split value (each part alike): activations, softmax, sum

    def shape(self, args: dict, shape: Shape) -> Shape:
        """The output shape of concrete `args` at a concrete input `shape`."""
        return (self.channels(args, shape[0]), *self.spatial(args, shape))


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil=False):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:  # PyTorch: the last window starts inside
            out -= 1
        return out
    return span // stride + 1


def _conv_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    channels, height, width = shape
    kh, kw = args["kernel"]
    groups, out = args["groups"], args["channels"]
    if channels % groups or out % groups:
        raise LayerError(
            f"{channels} input and {out} output channels are not both divisible by {groups} groups",
            "grouped convolutions need channel counts divisible by `groups`",
        )
    stride, dilation, pad = args["stride"], args["dilation"], args["padding"]
    size = (
        out_size(height, kh, stride, pad, dilation),
        out_size(width, kw, stride, pad, dilation),
    )
    if min(size) < 1:
        raise LayerError(
            f"the feature map vanishes: a {kh}x{kw}/{stride} convolution of {height}x{width}",
            "use a larger input, or a smaller stride",
        )
    return size


def _conv_weights(args: dict, inp: Shape, out: Shape) -> int:
    kh, kw = args["kernel"]
    return kh * kw * (inp[0] // args["groups"]) * out[0]


def _pool_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    channels, height, width = shape
    kh, kw = args["kernel"]
    stride, pad, ceil = args["stride"], args["padding"], args.get("ceil", False)
    if 2 * pad > min(kh, kw):
        raise LayerError(
            f"a {kh}x{kw} pool pads at most half its kernel, got padding {pad}",
            "PyTorch refuses more (pad should be at most half of the kernel size)",
        )
    size = out_size(height, kh, stride, pad, ceil=ceil), out_size(width, kw, stride, pad, ceil=ceil)
    if min(size) < 1 or min(height, width) + 2 * pad < min(kh, kw):
        raise LayerError(
            f"the feature map vanishes: a {kh}x{kw}/{stride} pool of {height}x{width}",
            "use a larger input, or a smaller stride",
        )
    return size


def _avg_pool_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    if args["ceil"] is True and args["count_include_pad"] is True:
        raise LayerError(
            "an average pool with both `ceil` and `count_include_pad` is not supported",
            "choose one of them (timm's blocks use one or the other)",
        )
    return _pool_spatial(args, shape)


def _pad_channels_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    channels, height, width = shape
    if args["channels"] < channels:
        raise LayerError(
            f"option A shrinks {channels} channels to {args['channels']}",
            "option A can only add channels (zero padding); use shortcut B or C, or widen the "
            "stage",
        )
    stride = args["stride"]
    return (-(-height // stride), -(-width // stride))


def _positive_channels(args: dict, channels):
    out = args["channels"]
    if not symbolic(out) and out < 1:
        raise LayerError(
            f"a {'convolution' if 'groups' in args else 'linear layer'} needs at least one output "
            f"channel, got {out}",
            "its channels come from the block's arguments: raise the stage width (or the "
            "option that divides it)",
        )
    return out


def _bn_params(args: dict, inp: Shape, out: Shape) -> int:
    return 2 * inp[0]


def _gn_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    if shape[0] % args["groups"]:
        raise LayerError(
            f"GroupNorm's {args['groups']} groups do not divide its {shape[0]} channels",
            "choose a number of groups that divides every normalised width (`norm groupnorm G`)",
        )
    return shape[1:]


def _channel_conv_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    size = args["size"]
    if shape[1:] != (1, 1):
        raise LayerError(
            f"channel_conv runs across the channels of a pooled map, got {shape[1]}x{shape[2]}",
            "put a `global_avg_pool` before it",
        )
    if size % 2 == 0:
        raise LayerError(
            f"channel_conv's kernel size must be odd (it keeps the {shape[0]} channels), got {size}",
            "make it odd, as ECA does: `k = max(t // 2 * 2 + 1, 3)`",
        )
    return (1, 1)


def _k(args: dict) -> str:
    return "x".join(map(str, args["kernel"]))


def _stride(args: dict) -> str:
    stride = args.get("stride", 1)
    return f"/{stride}" if not symbolic(stride) and stride and stride > 1 else ""


def _conv_short(a: dict) -> str:
    text = f"{_k(a)}{_stride(a)} conv {a['channels']}"
    if a["groups"] > 1:
        text += f" g{a['groups']}"
    if a["dilation"] > 1:
        text += f" d{a['dilation']}"
    return text


def _fixed(text: str) -> Callable[[dict], str]:
    return lambda args: text


PROBABILITY = Option("probability", 0.0)
AXES = ("channels", "positions", "parts")


def _split_spatial(args: dict, shape: Shape) -> tuple[int, int]:
    parts, groups = args["parts"], args["groups"]
    if shape[0] % (parts * groups):
        whole = f"{groups} groups of {parts} parts" if groups != 1 else f"{parts} parts"
        raise LayerError(
            f"{shape[0]} channels do not split into {whole}",
            "the parts must have equal channels: choose a count that divides the channels",
        )
    return shape[1:]


ACTIVATIONS = {
    "relu": ("max(x, 0)", "ReLU"),
    "gelu": ("x * Phi(x) (exact, not the tanh approximation)", "GELU"),
    "silu": ("x * sigmoid(x) (swish)", "SiLU"),
    "sigmoid": ("1 / (1 + exp(-x))", "sigmoid"),
}

KINDS: dict[str, Kind] = {
    "conv": Kind(
        "conv",
        "convolution: `conv KxK CHANNELS, stride S, groups G, dilation D, padding P, bias`; "
        "padding defaults to dilation * (K - 1) / 2",
        doc=lambda a: f"{_k(a)} conv",
        short=_conv_short,
        kernel=True,
        positional="channels",
        options={
            "channels": Option("whole"),
            "stride": Option("whole", 1),
            "groups": Option("whole", 1),
            "dilation": Option("whole", 1),
            "padding": Option("count", None),
            "bias": Option("flag", False),
        },
        channels=_positive_channels,
        spatial=_conv_spatial,
        params=lambda a, i, o: _conv_weights(a, i, o) + (o[0] if a["bias"] else 0),
        macs=lambda a, i, o: _conv_weights(a, i, o) * o[1] * o[2],
        weighted=True,
    ),
    "linear": Kind(
        "linear",
        "fully connected layer over the channels, at every position: `linear CHANNELS` (with a "
        "bias, as PyTorch's nn.Linear); the head's classifier is one",
        doc=_fixed("fc"),
        short=lambda a: f"fc {a['channels']}",
        positional="channels",
        options={"channels": Option("whole")},
        channels=_positive_channels,
        params=lambda a, i, o: i[0] * o[0] + o[0],
        macs=lambda a, i, o: i[0] * o[0] * o[1] * o[2],
        weighted=True,
    ),
    "channel_conv": Kind(
        "channel_conv",
        "a 1-D convolution across the channels of a pooled (1x1) map, one filter of SIZE taps "
        "and no bias, zero-padded to keep the channels (ECA, Wang et al. 2020; PyTorch's "
        "nn.Conv1d(1, 1, SIZE) on the channels as a sequence): `channel_conv SIZE`, SIZE odd",
        doc=lambda a: (
            "conv across channels"
            if symbolic(a["size"])
            else (f"{a['size']}-tap conv across channels")
        ),  # fmt: skip
        short=lambda a: "channel conv" if symbolic(a["size"]) else f"channel conv {a['size']}",
        positional="size",
        options={"size": Option("whole")},
        spatial=_channel_conv_spatial,
        params=lambda a, i, o: a["size"],
        macs=lambda a, i, o: a["size"] * o[0],
        weighted=True,
    ),
    "batchnorm": Kind(
        "batchnorm",
        "batch normalisation (the network's momentum and eps); `zero_init`: gamma starts at 0 "
        "when the network's init asks for zero_init_residual",
        doc=_fixed("BN"),
        short=_fixed("BN"),
        options={"zero_init": Option("flag", False)},
        params=_bn_params,
        weighted=True,
    ),
    "groupnorm": Kind(
        "groupnorm",
        "group normalisation (Wu and He 2018; PyTorch's nn.GroupNorm, with a scale and a shift "
        "per channel): `groupnorm GROUPS, eps E`; `zero_init` as batchnorm's; the network's "
        "`norm groupnorm G` makes every `batchnorm` one",
        doc=lambda a: f"GN({a['groups']})",
        short=lambda a: f"GN{a['groups']}",
        positional="groups",
        options={
            "groups": Option("whole"),
            "eps": Option("positive", 1e-5),
            "zero_init": Option("flag", False),
        },
        spatial=_gn_spatial,
        params=_bn_params,
        weighted=True,
    ),
    "layernorm": Kind(
        "layernorm",
        "layer normalisation over the channels at each position, with a scale and a shift per "
        "channel (timm's LayerNorm2d, PyTorch's nn.LayerNorm on the channels-last map): "
        "`layernorm, eps E`",
        doc=_fixed("LN"),
        short=_fixed("LN"),
        options={"eps": Option("positive", 1e-5)},
        params=_bn_params,
        weighted=True,
    ),
    **{
        name: Kind(
            name, f"activation: {formula}", doc=_fixed(title), short=_fixed(title), on_parts=True
        )  # fmt: skip
        for name, (formula, title) in ACTIVATIONS.items()
    },
    "max_pool": Kind(
        "max_pool",
        "max pooling: `max_pool KxK, stride S, padding P`; stride defaults to K, padding to 0 "
        "(as PyTorch)",
        doc=_fixed("max pool"),
        short=lambda a: f"{_k(a)}{_stride(a)} max pool",
        kernel=True,
        options={"stride": Option("whole", None), "padding": Option("count", None)},
        spatial=_pool_spatial,
    ),
    "avg_pool": Kind(
        "avg_pool",
        "average pooling: `avg_pool KxK, stride S, padding P, ceil, count_include_pad`; stride "
        "defaults to K, padding to 0; padding is counted in the average only with "
        "`count_include_pad` (PyTorch's default, which ResNeSt and Res2Net use; timm's ResNet-D "
        "shortcut does not)",
        doc=_fixed("average pool"),
        short=lambda a: f"{_k(a)}{_stride(a)} avg pool",
        kernel=True,
        options={
            "stride": Option("whole", None),
            "padding": Option("count", None),
            "ceil": Option("flag", False),
            "count_include_pad": Option("flag", False),
        },
        spatial=_avg_pool_spatial,
    ),
    "global_avg_pool": Kind(
        "global_avg_pool",
        "the mean over height and width, kept as a 1x1 map",
        doc=_fixed("global average pool"),
        short=_fixed("global avg pool"),
        spatial=lambda a, s: (1, 1),
        on_parts=True,
    ),
    "dropout": Kind(
        "dropout",
        "dropout with probability P (`dropout P`); off in evaluation; left out at P = 0",
        doc=_fixed("dropout"),
        short=lambda a: f"dropout {a['p']:g}",
        positional="p",
        options={"p": PROBABILITY},
        vanishes_at_zero="p",
        random=True,
    ),
    "drop_path": Kind(
        "drop_path",
        "stochastic depth: drops the whole residual branch of a sample with probability P. "
        "`mode inverted` (timm) scales kept samples by 1/(1-P) in training; `mode survival` "
        "(Huang et al. 2016) scales by 1-P at test time instead. Left out at P = 0",
        doc=_fixed("drop path"),
        short=lambda a: f"drop path {a['p']:.3g}",
        positional="p",
        options={"p": PROBABILITY, "mode": Option("word", "inverted", ("inverted", "survival"))},
        vanishes_at_zero="p",
        random=True,
    ),
    "multiply": Kind(
        "multiply",
        "the value times a kept one (`multiply NAME`, after `keep NAME`), broadcast where one of "
        "them has 1 channel or a 1x1 map; `multiply` alone: times the input of the definition it "
        "is in (a gate, as in squeeze-and-excitation)",
        doc=lambda a: "gate" if a["value"] == "input" else f"times {a['value']}",
        short=lambda a: "multiply" if a["value"] == "input" else f"multiply {a['value']}",
        positional="value",
        options={"value": Option("name", "input")},
        gate=True,
        on_parts=True,
    ),
    "add": Kind(
        "add",
        "the value plus a kept one (`add NAME`), broadcast as `multiply`; `add input`: plus the "
        "input of the definition it is in (global context's fusion by addition). `add shortcut` "
        "is the residual add",
        doc=lambda a: f"plus {a['value']}",
        short=lambda a: f"add {a['value']}",
        positional="value",
        options={"value": Option("name", "input")},
        gate=True,
        on_parts=True,
    ),
    "split": Kind(
        "split",
        "the channels split into N equal parts, stacked on a parts axis: `split N` (each part "
        "has C / N channels); `, groups G`: the channels are G groups, each split into N (the "
        "channel order of a grouped convolution's output, as ResNeSt's radix softmax reads it)",
        doc=lambda a: f"split into {a['parts']}",
        short=lambda a: f"split {a['parts']}",
        positional="parts",
        options={"parts": Option("whole"), "groups": Option("whole", 1)},
        channels=lambda a, c: apply("//", c, a["parts"]),
        spatial=lambda a, s: _split_spatial(a, s),
    ),
    "concat": Kind(
        "concat",
        "the parts of a split value joined along the channels, part after part (the inverse of "
        "`split`)",
        doc=_fixed("concat"),
        short=_fixed("concat"),
        on_parts=True,
    ),
    "sum": Kind(
        "sum",
        "the sum over an axis: `sum parts` (of a split value: one value), `sum positions` (a "
        "1x1 map), `sum channels` (one channel)",
        doc=lambda a: f"sum over {a['axis']}",
        short=lambda a: f"sum {a['axis']}",
        positional="axis",
        options={"axis": Option("word", None, AXES)},
        channels=lambda a, c: 1 if a["axis"] == "channels" else c,
        spatial=lambda a, s: (1, 1) if a["axis"] == "positions" else s[1:],
        on_parts=True,
    ),
    "softmax": Kind(
        "softmax",
        "the softmax over an axis: `softmax parts` (across the parts of a split value), "
        "`softmax positions` (over height and width), `softmax channels`",
        doc=lambda a: f"softmax over {a['axis']}",
        short=lambda a: f"softmax {a['axis']}",
        positional="axis",
        options={"axis": Option("word", None, AXES)},
        on_parts=True,
    ),
    "identity": Kind(
        "identity",
        "does nothing (holds a place in a numbered group)",
        doc=_fixed("identity"),
        short=_fixed("identity"),
    ),
    "pad_channels": Kind(
        "pad_channels",
        "option A's shortcut: `pad_channels CHANNELS, stride S` subsamples by S and adds zero "
        "channels up to CHANNELS",
        doc=_fixed("zero padding"),
        short=_fixed("pad A"),
        positional="channels",
        options={"channels": Option("whole"), "stride": Option("whole", 1)},
        channels=lambda a, c: a["channels"],
        spatial=_pad_channels_spatial,
    ),
}


def complete(kind: Kind, args: dict) -> dict:
    """`args` with every default filled in (the ones that depend on others computed); works on
    symbolic values as on constants."""
    full = {"kernel": args["kernel"]} if kind.kernel else {}  # checked first: padding is of it
    full |= {name: args.get(name, option.default) for name, option in kind.options.items()}
    if kind.kernel:
        kh = full["kernel"][0]
        if "stride" in full and full["stride"] is None:
            full["stride"] = kh
        if "padding" in full and full["padding"] is None:
            # a convolution keeps the size ("same"); a pool, as PyTorch's, pads nothing
            if kind.name == "conv":
                full["padding"] = apply("//", apply("*", full["dilation"], apply("-", kh, 1)), 2)
            else:
                full["padding"] = 0
    return full


def through(kind: Kind, args: dict, parts):
    """The parts axis after a layer, from the one before it: None (a value of one part) or the
    number of parts (after `split`); and the factor of its channels (`concat`: the parts).
    LayerError where the layer cannot read such a value."""
    if kind.name == "split":
        if parts is not None:
            raise LayerError(f"the value is already split into {parts} parts",
                             "join them first: `sum parts` or `concat`")  # fmt: skip
        return args["parts"], 1
    joins = kind.name == "concat" or (kind.name == "sum" and args["axis"] == "parts")
    if parts is None:
        if joins or args.get("axis") == "parts":
            written = "concat" if kind.name == "concat" else f"{kind.name} parts"
            raise LayerError(f"`{written}` reads a split value, and this one has no parts",
                             "split it first: `split N`")  # fmt: skip
        return None, 1
    if not kind.on_parts:
        raise LayerError(
            f"`{kind.name}` reads a value of one part, and this one is split into {parts} parts",
            "join the parts first (`sum parts`, `concat`), or run it on each part: "
            "`each i { ... }`",
        )
    if joins:
        return None, (parts if kind.name == "concat" else 1)
    return parts, 1


def vanishes(kind: Kind, args: dict) -> bool:
    """A layer that does nothing with these arguments (dropout 0) is left out."""
    if kind.vanishes_at_zero is None:
        return False
    value = constant(args[kind.vanishes_at_zero])
    return not symbolic(value) and value == 0
