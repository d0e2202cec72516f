"""The JAX backend: model.py is a Flax linen network that reads like Flax's examples/imagenet
`models.py`, with PyTorch's padding, initialisation and BN conventions; weights.py converts a
state_dict of the PyTorch package into its variables; data.py and train.py are the PyTorch
trainer's pipelines, schedule and files in JAX, data parallel over every device.

Module names mirror the PyTorch package's (`layer2.0.downsample.0` is `layer2_0/downsample_0`),
so the two backends' networks are the same network, layer for layer.
"""

from __future__ import annotations

from ... import ir
from ...analysis import Analysis
from ..common import model_context as network_model_context
from ..templating import readme_context, render_template, runtime_module, train_context
from .model import render_model

# The files of the model half of a package; a trainer adds its files beside them.
MODEL_FILES = {
    "__init__.py": "jax/__init__.py.jinja",
    "weights.py": "jax/weights.py.jinja",
    "README.md": "jax/README.md.jinja",
}


def flax_momentum(torch_momentum: float) -> float:
    """Flax keeps `momentum` of the running average, PyTorch adds `momentum` of the batch."""
    return round(1.0 - torch_momentum, 12)


def model_context(spec: ir.Spec, analysis: Analysis) -> dict:
    """The facts both backends share about the network, and what the Flax code needs besides."""
    context = network_model_context(spec, analysis)
    net = spec.network
    return context | {
        "bn_momentum": flax_momentum(net.batchnorm.momentum),
        "bn_eps": net.batchnorm.eps,
        # BN's running statistics: a GroupNorm network has no collection but its params
        "batch_stats": "batchnorm" in analysis.lowered.kinds,
        "channel_conv": "channel_conv" in analysis.lowered.kinds,  # a 1-D kernel to convert
        # the classifier's parameters: params/fc, or params/head/fc (timm's byobnet layout)
        "head_params": '["head"]["fc"]' if net.layout == "byobnet" else "[runtime.HEAD]",
        "input_nhwc": (net.input[1], net.input[2], net.input[0]),
    }


def render_package(
    spec: ir.Spec, analysis: Analysis, *, header: str, command: str, package: str
) -> dict[str, str]:
    """`header` opens every Python file; `command` regenerates the package into `package`."""
    context = model_context(spec, analysis) | readme_context(spec, analysis)
    # train.py's default run directory: one per package, the backend's included
    context |= {"header": header, "command": command, "package": package,
                "run": "runs/" + package.rsplit("/", 1)[-1]}  # fmt: skip
    files = {name: render_template(template, **context) for name, template in MODEL_FILES.items()}
    files["model.py"] = render_model(analysis.lowered, spec, analysis, header)
    if spec.train is not None:
        context |= train_context(spec)  # the PyTorch trainer's facts: the same recipe
        files["data.py"] = render_template("jax/data.py.jinja", **context)
        files["train.py"] = render_template("jax/train.py.jinja", **context)
        files["export.py"] = render_template("jax/export.py.jinja", **context)
        files["predict.py"] = render_template("jax/predict.py.jinja", **context)
        files["runtime.py"] = runtime_module(header)
    return files
