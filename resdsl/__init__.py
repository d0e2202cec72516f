"""resdsl: ResNet variants as small declarative specs, compiled to PyTorch and JAX trainers."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`resdsl.create_model` and `resdsl.create_flax_model` (resdsl/api.py), loaded when first
    used: importing resdsl stays as light as the commands need."""
    if name in ("create_model", "create_flax_model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'resdsl' has no attribute {name!r}")
