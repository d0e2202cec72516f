"""The PyTorch backend: model.py reads like torchvision's resnet.py; data.py and train.py are the
paper's pipelines and schedule for the spec's train section."""

from __future__ import annotations

from .. import ir
from ..analysis import Analysis
from .network_view import model_context
from .templating import data_context, readme_context, recipe_lines, render_template, runtime_module
from .torch_model import TorchEmitter, render_model


def render_package(
    spec: ir.Spec, analysis: Analysis, *, header: str, command: str, package: str
) -> dict[str, str]:
    context = model_context(spec, analysis) | readme_context(spec, analysis)
    context |= {"header": header, "command": command, "package": package}
    files = {
        "__init__.py": render_template("torch/__init__.py.jinja", **context),
        "model.py": render_model(
            TorchEmitter(analysis.lowered, context["custom_norm"]), spec, analysis, header
        ),
        "README.md": render_template("torch/README.md.jinja", **context),
    }
    if spec.train is not None:
        context |= train_context(spec)
        files["data.py"] = render_template("torch/data.py.jinja", **context)
        files["train.py"] = render_template("torch/train.py.jinja", **context)
        files["export.py"] = render_template("torch/export.py.jinja", **context)
        files["runtime.py"] = runtime_module(header)
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
        text = (
            f"WARMUP_LR until the training error is below {train.warmup.train_error:g}, then {text}"
        )
    elif isinstance(train.warmup, ir.WarmupFor):
        text = f"WARMUP_LR for the first {train.warmup.length} {unit}, then {text}"
    return text
