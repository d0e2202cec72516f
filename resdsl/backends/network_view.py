"""What every file of a package says about the network (names, input, counts); the model files
themselves are printed from the lowered layers by `torch_model.py` and `jax_model.py`."""

from __future__ import annotations

from .. import ir
from ..analysis import Analysis
from ..quoting import code_text


def model_context(spec: ir.Spec, analysis: Analysis) -> dict:
    net = spec.network
    bn = net.batchnorm
    return {
        "spec_path": code_text(spec.path),
        "net": net,
        "analysis": analysis,
        "custom_norm": (bn.momentum, bn.eps) != (0.1, 1e-5),
        "stochastic": analysis.lowered.stochastic,  # dropout or drop path: an rng in training
    }
