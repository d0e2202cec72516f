"""Static analysis of a network: shapes, parameters and multiply-adds, as a fold over its
lowered layers (`lower.py`), and the checks that need them.

Counts follow torchvision: parameters are trainable tensors (conv weights and biases, BN gamma
and beta, fc weight and bias; BN running statistics are buffers); multiply-adds count
convolutions and the fc layer. Each layer's cost is defined once, with its kind, in `layers.py`.
"""

from __future__ import annotations

from typing import NamedTuple

from . import ir
from .diagnostics import Report
from .layers import KINDS
from .limits import MAX_PARAMS
from .lower import Lowered, lower


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
    lowered: Lowered

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


def cost(layers) -> Cost:
    """The fold: parameters and multiply-adds of a sequence of layers."""
    total = Cost()
    for layer in layers:
        total += Cost(layer.params, layer.macs)
    return total


def analyse(spec: ir.Spec, report: Report) -> Analysis | None:
    """Lower the network and measure it; problems are reported with the span at fault."""
    network = spec.network
    lowered = lower(network, spec.definitions, report)
    if lowered is None:
        return None
    neck = lowered.neck  # a head definition's layers before the pool
    depth = lowered.stem.depth + sum(block.depth for block in lowered.blocks()) + 1
    depth += neck.depth if neck else 0
    stem = cost(lowered.stem.layers())
    stem_part = Part("stem", 0, lowered.stem.out, stem.params, stem.macs)
    stages = []
    for stage in lowered.stages:
        total = Cost()
        for block in stage.blocks:
            total += cost(block.layers())
        stages.append(Part(stage.ir.name, len(stage.blocks), stage.out, total.params, total.macs))
    head = cost([*(neck.layers() if neck else ()), *lowered.head])
    analysis = Analysis(
        network, depth, stem_part, tuple(stages),
        Part("head", 0, (network.classes,), head.params, head.macs), lowered,
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


__all__ = ["KINDS", "Analysis", "Cost", "Part", "analyse", "cost"]
