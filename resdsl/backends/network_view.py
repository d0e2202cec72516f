"""What both backends need to know about a network to render it: the block classes it defines,
its stages and shortcut options. The PyTorch and Flax packages build the same layers."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..analysis import Analysis
from .templating import describe_shortcut, stage_rows


@dataclass(frozen=True)
class BlockClass:
    """A block class the generated model defines."""

    kind: str  # basic | bottleneck
    preact: bool
    residual: bool
    expansion: int
    groups: int
    width_per_group: int
    stride_at: str

    @property
    def name(self) -> str:
        base = "BasicBlock" if self.kind == "basic" else "Bottleneck"
        return ("" if self.residual else "Plain") + ("PreAct" if self.preact else "") + base

    @property
    def custom_width(self) -> bool:
        return self.kind == "bottleneck" and (self.groups != 1 or self.width_per_group != 64)


def block_class(stage: ir.Stage) -> BlockClass:
    b = stage.block
    return BlockClass(
        b.kind, b.preact, stage.shortcut != "none", b.expansion, b.groups, b.width_per_group,
        b.stride_at,
    )  # fmt: skip


def model_context(spec: ir.Spec, analysis: Analysis) -> dict:
    net = spec.network
    classes: list[BlockClass] = []
    stages = []
    for row, stage in zip(stage_rows(spec, analysis), net.stages):
        cls = block_class(stage)
        if cls not in classes:
            classes.append(cls)
        stages.append(row | {"cls": cls.name, "attr": f"layer{row['index']}"})
    shortcuts = sorted({s.shortcut for s in net.stages if s.shortcut != "none"})
    projections = [k for k in shortcuts if k != "A"]
    bn = net.batchnorm
    return {
        "spec_path": spec.path,
        "net": net,
        "analysis": analysis,
        "classes": classes,
        "stages": stages,
        "shortcuts": shortcuts,
        "shortcut_descriptions": [describe_shortcut(k) for k in shortcuts or ["none"]],
        "projections": projections,
        "custom_norm": (bn.momentum, bn.eps) != (0.1, 1e-5),
        "uses_conv1x1": bool(projections) or any(c.kind == "bottleneck" for c in classes),
        "uses_conv3x3": True,
        "uses_zero_pad": "A" in shortcuts,
        "mixed_shortcuts": len(shortcuts) > 1,
        "mixed_classes": len(classes) > 1,
        "preact_mixed_inputs": net.preact and "A" in shortcuts and bool(projections),
    }
