"""The PyTorch backend: model.py reads like torchvision's resnet.py; data.py and train.py are the
paper's pipelines and schedule for the spec's train section."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..analysis import Analysis
from .templating import (
    data_context,
    describe_shortcut,
    readme_context,
    recipe_lines,
    render_template,
    stage_rows,
)


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


def render_package(
    spec: ir.Spec, analysis: Analysis, *, header: str, command: str, package: str
) -> dict[str, str]:
    context = model_context(spec, analysis) | readme_context(spec, analysis)
    context |= {"header": header, "command": command, "package": package}
    files = {
        "__init__.py": render_template("torch/__init__.py.jinja", **context),
        "model.py": render_template("torch/model.py.jinja", **context),
        "README.md": render_template("torch/README.md.jinja", **context),
    }
    if spec.train is not None:
        context |= train_context(spec)
        files["data.py"] = render_template("torch/data.py.jinja", **context)
        files["train.py"] = render_template("torch/train.py.jinja", **context)
    return files


def train_context(spec: ir.Spec) -> dict:
    train = spec.train
    data = data_context(spec)
    data["loader_class"] = "FolderData" if data["folder"] else "ArrayData"
    return {
        "train": train,
        "data": data,
        "schedule": train.schedule,
        "warmup": train.warmup,
        "eval_names": [protocol.op for protocol in train.eval],
        "protocol_functions": sorted(
            {p.op for p in train.eval} | ({"single_view"} if train.validate_every else set())
        ),
        "recipe_lines": recipe_lines(spec),
        "schedule_doc": schedule_doc(train),
    }


def schedule_doc(train: ir.Train) -> str:
    schedule, unit = train.schedule, train.length.unit
    if isinstance(schedule, ir.MultiStep):
        text = f"LR, times {schedule.factor:g} at each milestone"
    elif isinstance(schedule, ir.Plateau):
        text = f"LR, times {schedule.factor:g} when the validation error plateaus"
    else:
        text = "LR throughout"
    if isinstance(train.warmup, ir.WarmupUntil):
        text = f"WARMUP_LR until the training error is below {train.warmup.train_error:g}, then {text}"
    elif isinstance(train.warmup, ir.WarmupFor):
        text = f"WARMUP_LR for the first {train.warmup.length} {unit}, then {text}"
    return text
