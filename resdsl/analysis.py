"""Static analysis of a network: output shapes, parameters and multiply-adds, and the checks that
need them (vanishing feature maps, option A shrinking channels, groups, absurd sizes).

Counts follow torchvision: parameters are trainable tensors (conv weights, BN gamma and beta, fc
weight and bias; BN running statistics are buffers); multiply-adds count convolutions and the fc
layer. Stages are computed in closed form (first block + (n - 1) identical blocks), so even an
absurd `--set n=10**9` is measured, and refused, instantly.
"""

from __future__ import annotations

from typing import NamedTuple

from . import ir
from .diagnostics import Report

MAX_LAYERS = 100_000
MAX_PARAMS = 10_000_000_000


class Cost(NamedTuple):
    params: int = 0
    macs: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)

    def __mul__(self, times: int) -> Cost:
        return Cost(self.params * times, self.macs * times)


class Part(NamedTuple):
    """One row of the summary: the stem, a stage or the head."""

    name: str
    blocks: int
    out: tuple[int, ...]
    params: int
    macs: int


class Analysis(NamedTuple):
    network: ir.Network
    depth: int
    stem: Part
    stages: tuple[Part, ...]
    head: Part

    @property
    def params(self) -> int:
        return self.stem.params + sum(s.params for s in self.stages) + self.head.params

    @property
    def macs(self) -> int:
        return self.stem.macs + sum(s.macs for s in self.stages) + self.head.macs

    def to_json(self) -> dict:
        net = self.network
        return {
            "name": net.name,
            "input": list(net.input),
            "classes": net.classes,
            "depth": self.depth,
            "params": self.params,
            "macs": self.macs,
            "stages": [
                {
                    "name": s.name,
                    "blocks": s.blocks,
                    "out": list(s.out),
                    "params": s.params,
                    "macs": s.macs,
                }
                for s in self.stages
            ],
            "stem": {
                "out": list(self.stem.out),
                "params": self.stem.params,
                "macs": self.stem.macs,
            },
            "head": {"params": self.head.params, "macs": self.head.macs},
        }


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv(cin: int, cout: int, kernel: int, hw: tuple[int, int], groups: int = 1) -> Cost:
    """A bias-free convolution whose output is `hw`."""
    weights = kernel * kernel * (cin // groups) * cout
    return Cost(weights, weights * hw[0] * hw[1])


def bn(channels: int) -> Cost:
    return Cost(2 * channels, 0)


def stem_cost(stem: ir.Stem, channels: int, hw: tuple[int, int], preact: bool):
    """(cost, output size) of the stem."""
    width = stem.width
    if stem.kind == "cifar":
        return conv(channels, width, 3, hw) + (Cost() if preact else bn(width)), hw
    kernel, padding = (7, 3) if stem.kind == "imagenet" else (3, 1)
    hw = (conv_out(hw[0], kernel, 2, padding), conv_out(hw[1], kernel, 2, padding))
    if stem.kind == "imagenet":
        cost = conv(channels, width, 7, hw) + bn(width)
    else:
        half = width // 2
        cost = conv(channels, half, 3, hw) + bn(half) + conv(half, half, 3, hw) + bn(half)
        cost += conv(half, width, 3, hw) + bn(width)
    return cost, (conv_out(hw[0], 3, 2, 1), conv_out(hw[1], 3, 2, 1))


def block_cost(block: ir.Block, shortcut: str, cin: int, planes: int, stride: int, hw):
    """(cost, output size) of one block taking `cin` channels at `hw`."""
    out = planes * block.expansion
    hw_out = (conv_out(hw[0], 3, stride, 1), conv_out(hw[1], 3, stride, 1))
    preact = block.preact
    if block.kind == "basic":
        cost = conv(cin, planes, 3, hw_out, block.groups)
        cost += conv(planes, planes, 3, hw_out, block.groups)
        norms = (cin, planes) if preact else (planes, planes)
    else:
        width = block.inner_width(planes)
        first_hw = hw_out if block.stride_at == "1x1" else hw
        cost = (
            conv(cin, width, 1, first_hw)
            + conv(width, width, 3, hw_out, block.groups)
            + conv(width, out, 1, hw_out)
        )
        norms = (cin, width, width) if preact else (width, width, out)
    for channels in norms:
        cost += bn(channels)
    if projects(shortcut, cin, out, stride):
        cost += conv(cin, out, 1, hw_out) + (Cost() if preact else bn(out))
    return cost, hw_out


def projects(shortcut: str, cin: int, out: int, stride: int) -> bool:
    """Does this shortcut hold a 1x1 projection (B and D where the shape changes, C always)?"""
    if shortcut == "C":
        return True
    return shortcut in ("B", "D") and (stride != 1 or cin != out)


def depth_of(network: ir.Network) -> int:
    """Weighted layers on the longest path: convolutions and the fc, as the paper counts."""
    stem_layers = 3 if network.stem.kind == "deep" else 1
    per_block = {"basic": 2, "bottleneck": 3}
    return stem_layers + sum(s.blocks * per_block[s.block.kind] for s in network.stages) + 1


def analyse(network: ir.Network, report: Report) -> Analysis | None:
    """Shapes and counts; problems are reported with the span of the stage at fault."""
    depth = depth_of(network)
    if depth > MAX_LAYERS:
        report.error(
            f"network `{network.name}` would have {depth:,} layers; resdsl refuses networks "
            f"deeper than {MAX_LAYERS:,}",
            network.span,
            "check the block counts (and any --set values)",
        )
        return None
    channels, height, width = network.input
    stem = network.stem
    if stem.kind == "deep" and stem.width % 2:
        report.error(
            f"a deep stem needs an even width (its first convs have width/2), got {stem.width}",
            stem.span,
        )
    cost, hw = stem_cost(stem, channels, (height, width), network.preact)
    stem_part = Part("stem", 0, (stem.width, *hw), cost.params, cost.macs)
    cin = stem.width
    stages = []
    for stage in network.stages:
        part = _stage(stage, cin, hw, report)
        if part is None:
            return None
        stages.append(part)
        cin, hw = stage.out_channels, part.out[1:]
    head = Cost(network.features * network.classes + network.classes,
                network.features * network.classes)  # fmt: skip
    if network.preact:
        head += bn(network.features)
    analysis = Analysis(
        network, depth, stem_part, tuple(stages),
        Part("head", 0, (network.classes,), head.params, head.macs),
    )  # fmt: skip
    if analysis.params > MAX_PARAMS:
        report.error(
            f"network `{network.name}` would have {analysis.params:,} parameters; resdsl refuses "
            f"networks beyond {MAX_PARAMS:,}",
            network.span,
            "check the widths and block counts (and any --set values)",
        )
        return None
    return None if report.failed else analysis


def _stage(stage: ir.Stage, cin: int, hw: tuple[int, int], report: Report) -> Part | None:
    block, out = stage.block, stage.out_channels
    ok = True
    if stage.stride > 1 and min(hw) == 1:
        report.error(
            f"{stage.title} cannot subsample: its input is already {hw[0]}x{hw[1]}",
            stage.span,
            "the feature map vanishes; use a larger input, or stride 1 here",
        )
        ok = False
    if stage.shortcut == "A" and out < cin:
        report.error(
            f"{stage.title} shrinks {cin} channels to {out} with shortcut A",
            stage.span,
            "option A can only add channels (zero padding); use shortcut B or C, or widen "
            "the stage",
        )
        ok = False
    groups = block.groups
    if block.kind == "bottleneck" and block.inner_width(stage.width) == 0:
        report.error(
            f"{stage.title}: the bottleneck's 3x3 would have 0 channels "
            f"(int({stage.width} * {block.width_per_group} / 64) * {groups})",
            stage.span,
            "raise width_per_group or the stage width",
        )
        ok = False
    if block.kind == "basic" and groups > 1:
        for what, channels in (("input", cin), ("width", stage.width)):
            if channels % groups:
                report.error(
                    f"{stage.title}: {what} {channels} is not divisible by {groups} groups",
                    stage.span,
                    "grouped convolutions need channel counts divisible by `groups`",
                )
                ok = False
    if not ok:
        return None
    first, hw_out = block_cost(block, stage.shortcut, cin, stage.width, stage.stride, hw)
    rest, _ = block_cost(block, stage.shortcut, out, stage.width, 1, hw_out)
    total = first + rest * (stage.blocks - 1)
    return Part(stage.name, stage.blocks, (out, *hw_out), total.params, total.macs)
