"""resdsl: ResNet variants as small declarative specs, compiled to PyTorch and JAX trainers."""

__version__ = "0.1.0"
