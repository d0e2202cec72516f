"""The primitive layers: each kind's arguments, shape rule and cost, in one place.

A kind of layer is a `Kind`: which arguments it takes (a kernel size `KxK`, one positional value,
`, name value` options), how it changes a (channels, height, width) shape, and how many
parameters and multiply-adds it costs. The two emitters (`backends/torch_model.py`,
`backends/jax_model.py`) print each kind; docs/adding-a-layer.md tells how to add one. (A fully
connected layer inside a block is a 1x1 convolution with `bias`; the head's fc is the network's.)

Counts follow torchvision: parameters are trainable tensors (BN running statistics are buffers);
multiply-adds count convolutions (bias adds are not counted) and the fc layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

Shape = tuple[int, int, int]  # channels, height, width


class LayerError(Exception):
    """A layer that cannot be built with these arguments at this shape; the message says why."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


class Option(NamedTuple):
    """An argument: `kind` is whole (>= 1) | count (>= 0) | probability | flag | word;
    `default` None: required (or, for stride and padding, derived from the kernel)."""

    kind: str
    default: object = None
    choices: tuple[str, ...] = ()


class Kind(NamedTuple):
    name: str
    summary: str
    kernel: bool = False  # takes `KxK` (or a whole number for a square kernel)
    positional: str | None = None  # the name the one positional value binds to
    options: dict[str, Option] = {}
    shape: Callable[[dict, Shape], Shape] = lambda args, shape: shape
    params: Callable[[dict, Shape, Shape], int] = lambda args, inp, out: 0
    macs: Callable[[dict, Shape, Shape], int] = lambda args, inp, out: 0
    # a layer with this argument at 0 does nothing and is left out (dropout 0, drop_path 0)
    vanishes_at_zero: str | None = None
    weighted: bool = False  # has parameters: needs a name (it becomes a state_dict key)


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil=False):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:  # PyTorch: the last window starts inside
            out -= 1
        return out
    return span // stride + 1


def _conv_shape(args: dict, shape: Shape) -> Shape:
    channels, height, width = shape
    kh, kw = args["kernel"]
    groups, out = args["groups"], args["channels"]
    if out < 1:
        raise LayerError(
            f"a convolution needs at least one output channel, got {out}",
            "its channels come from the block's arguments: raise the stage width (or the "
            "option that divides it)",
        )
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
    return (out, *size)


def _conv_weights(args: dict, inp: Shape, out: Shape) -> int:
    kh, kw = args["kernel"]
    return kh * kw * (inp[0] // args["groups"]) * out[0]


def _pool_shape(args: dict, shape: Shape) -> Shape:
    channels, height, width = shape
    kh, kw = args["kernel"]
    stride, pad, ceil = args["stride"], args["padding"], args.get("ceil", False)
    size = out_size(height, kh, stride, pad, ceil=ceil), out_size(width, kw, stride, pad, ceil=ceil)
    if min(size) < 1 or min(height, width) + 2 * pad < min(kh, kw):
        raise LayerError(
            f"the feature map vanishes: a {kh}x{kw}/{stride} pool of {height}x{width}",
            "use a larger input, or a smaller stride",
        )
    return (channels, *size)


def _pad_channels_shape(args: dict, shape: Shape) -> Shape:
    channels, height, width = shape
    if args["channels"] < channels:
        raise LayerError(
            f"option A shrinks {channels} channels to {args['channels']}",
            "option A can only add channels (zero padding); use shortcut B or C, or widen the "
            "stage",
        )
    stride = args["stride"]
    return (args["channels"], -(-height // stride), -(-width // stride))


def _bn_params(args: dict, inp: Shape, out: Shape) -> int:
    return 2 * inp[0]


PROBABILITY = Option("probability", 0.0)
ACTIVATIONS = {
    "relu": "max(x, 0)",
    "gelu": "x * Phi(x) (exact, not the tanh approximation)",
    "silu": "x * sigmoid(x) (swish)",
    "sigmoid": "1 / (1 + exp(-x))",
}

KINDS: dict[str, Kind] = {
    "conv": Kind(
        "conv",
        "convolution: `conv KxK CHANNELS, stride S, groups G, dilation D, padding P, bias`; "
        "padding defaults to dilation * (K - 1) / 2",
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
        shape=_conv_shape,
        params=lambda a, i, o: _conv_weights(a, i, o) + (o[0] if a["bias"] else 0),
        macs=lambda a, i, o: _conv_weights(a, i, o) * o[1] * o[2],
        weighted=True,
    ),
    "batchnorm": Kind(
        "batchnorm",
        "batch normalisation (the network's momentum and eps); `zero_init`: gamma starts at 0 "
        "when the network's init asks for zero_init_residual",
        options={"zero_init": Option("flag", False)},
        params=_bn_params,
        weighted=True,
    ),
    **{name: Kind(name, f"activation: {formula}") for name, formula in ACTIVATIONS.items()},
    "max_pool": Kind(
        "max_pool",
        "max pooling: `max_pool KxK, stride S, padding P`; stride defaults to K, padding to 0 "
        "(as PyTorch)",
        kernel=True,
        options={"stride": Option("whole", None), "padding": Option("count", None)},
        shape=_pool_shape,
    ),
    "avg_pool": Kind(
        "avg_pool",
        "average pooling: `avg_pool KxK, stride S, padding P, ceil`; stride defaults to K, "
        "padding to 0; padding is not counted in the average (count_include_pad=False)",
        kernel=True,
        options={
            "stride": Option("whole", None),
            "padding": Option("count", None),
            "ceil": Option("flag", False),
        },
        shape=_pool_shape,
    ),
    "global_avg_pool": Kind(
        "global_avg_pool",
        "the mean over height and width, kept as a 1x1 map",
        shape=lambda a, s: (s[0], 1, 1),
    ),
    "dropout": Kind(
        "dropout",
        "dropout with probability P (`dropout P`); off in evaluation; left out at P = 0",
        positional="p",
        options={"p": PROBABILITY},
        vanishes_at_zero="p",
    ),
    "drop_path": Kind(
        "drop_path",
        "stochastic depth: drops the whole residual branch of a sample with probability P. "
        "`mode inverted` (timm) scales kept samples by 1/(1-P) in training; `mode survival` "
        "(Huang et al. 2016) scales by 1-P at test time instead. Left out at P = 0",
        positional="p",
        options={"p": PROBABILITY, "mode": Option("word", "inverted", ("inverted", "survival"))},
        vanishes_at_zero="p",
    ),
    "multiply": Kind(
        "multiply",
        "the value times the input of the block it is in (a gate, as in squeeze-and-excitation)",
    ),
    "identity": Kind("identity", "does nothing (holds a place in a numbered group)"),
    "pad_channels": Kind(
        "pad_channels",
        "option A's shortcut: `pad_channels CHANNELS, stride S` subsamples by S and adds zero "
        "channels up to CHANNELS",
        positional="channels",
        options={"channels": Option("whole"), "stride": Option("whole", 1)},
        shape=_pad_channels_shape,
    ),
}


def complete(kind: Kind, args: dict) -> dict:
    """`args` with every default filled in (the ones that depend on others computed)."""
    full = {name: args.get(name, option.default) for name, option in kind.options.items()}
    if kind.kernel:
        full["kernel"] = args["kernel"]
        kh = full["kernel"][0]
        if "stride" in full and full["stride"] is None:
            full["stride"] = kh
        if "padding" in full and full["padding"] is None:
            # a convolution keeps the size ("same"); a pool, as PyTorch's, pads nothing
            full["padding"] = full["dilation"] * (kh - 1) // 2 if kind.name == "conv" else 0
    return full
