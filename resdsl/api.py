"""The Python API for notebooks: a spec's network as a PyTorch module or a Flax module, built in
memory from the code `resdsl compile` writes (no package directory), as `timm.create_model` and
`torchvision.models.resnet50` give theirs.

    import resdsl
    model = resdsl.create_model("specs/torchvision/resnet50.res", num_classes=10)
    model = resdsl.create_model("specs/cifar/resnet20.res", n=9)          # ResNet-56
    module, init = resdsl.create_flax_model("specs/cifar/resnet20.res")
    variables = init(0)                                                   # params, batch_stats

Only these functions import a framework (through the generated code they run); `import resdsl`
and the commands do not.
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Callable
from pathlib import Path

from .compile import build_files
from .diagnostics import SpecError
from .frontend import load_spec


def _module(path: str | Path, backend: str, params: dict) -> types.ModuleType:
    """model.py of the spec's package for `backend`, run as a module of its own."""
    sets = [f"{name}={value}" for name, value in params.items()]
    try:
        spec, analysis = load_spec(path, sets)
    except SpecError as error:
        raise ValueError(f"{path} is not a valid spec:\n{error.report.render()}") from None
    if spec.train is not None:  # the network alone: its model.py does not depend on training
        spec = spec.model_copy(update={"train": None})
    text = build_files(spec, analysis, backend=backend, sets=sets)["model.py"]
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = f"resdsl_model_{spec.network.name}_{backend}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = f"<{spec.path}: model.py, {backend}>"
        # importable by name, while it runs (Flax's dataclasses look themselves up) and after
        # (pickle, torch.compile and copies find its classes)
        sys.modules[name] = module
        try:
            exec(compile(text, module.__file__, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def create_model(path: str | Path, *, num_classes: int | None = None, **params):
    """The spec's network as a PyTorch `nn.Module`, initialised as its package's build_model()
    initialises it; `num_classes` replaces the spec's classes, `params` its `param`s
    (`n=9`). Raises ValueError, with the spec's diagnostics, for a spec that does not check."""
    module = _module(path, "torch", params)
    return module.build_model() if num_classes is None else module.build_model(num_classes)


def create_flax_model(
    path: str | Path, *, num_classes: int | None = None, **params
) -> tuple[object, Callable[[int], dict]]:
    """The spec's network as a Flax linen module and its initialiser: `init(seed)` gives the
    variables ({"params", "batch_stats"}) the JAX package's init_variables gives."""
    module = _module(path, "jax", params)
    classes = {} if num_classes is None else {"num_classes": num_classes}

    def init(seed: int = 0) -> dict:
        import jax

        # compiled without XLA's backend optimizations: an initialisation runs once, and
        # optimizing it takes XLA seconds (the same draws; a value may differ in its last bit)
        compiled = jax.jit(
            module.init_variables, static_argnums=(0,), static_argnames="num_classes"
        )
        lowered = compiled.lower(seed, **classes)
        return lowered.compile({"xla_backend_optimization_level": 0})()

    return module.build_model(**classes), init
