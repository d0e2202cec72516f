"""The PyTorch backend: model.py reads like torchvision's resnet.py; data.py and train.py are the
paper's pipelines and schedule for the spec's train section."""

from __future__ import annotations

from ... import ir
from ...analysis import Analysis
from ..common import model_context
from ..templating import readme_context, render_template, runtime_module, train_context
from .model import render_model


def render_package(
    spec: ir.Spec, analysis: Analysis, *, header: str, command: str, package: str
) -> dict[str, str]:
    context = model_context(spec, analysis) | readme_context(spec, analysis)
    # train.py's default run directory: one per package, the backend's included
    context |= {"header": header, "command": command, "package": package,
                "run": "runs/" + package.rsplit("/", 1)[-1]}  # fmt: skip
    files = {
        "__init__.py": render_template("torch/__init__.py.jinja", **context),
        "model.py": render_model(analysis.lowered, spec, analysis, header, context["custom_norm"]),
        "README.md": render_template("torch/README.md.jinja", **context),
    }
    if spec.train is not None:
        context |= train_context(spec) | {"strided_1x1": _has_strided_1x1(analysis)}
        files["data.py"] = render_template("torch/data.py.jinja", **context)
        files["train.py"] = render_template("torch/train.py.jinja", **context)
        files["export.py"] = render_template("torch/export.py.jinja", **context)
        files["predict.py"] = render_template("torch/predict.py.jinja", **context)
        files["runtime.py"] = runtime_module(header)
    return files


def _has_strided_1x1(analysis: Analysis) -> bool:
    """Whether the network has a strided 1x1 convolution (a projection shortcut, a bottleneck
    that subsamples in its first 1x1): the layer whose channels_last backward torch 2.14.1 gets
    wrong on AVX-512 CPUs."""
    lowered = analysis.lowered
    blocks = [lowered.stem] + [block for stage in lowered.stages for block in stage.blocks]
    return any(
        layer.kind == "conv" and tuple(layer.args["kernel"]) == (1, 1) and layer.args["stride"] > 1
        for block in blocks
        for layer in block.layers()
    )
