import os

import pytest

from tests.helpers import ROOT

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each, or OpenMP's spinning threads fight for cores
    # (set before torch or jax is imported, and inherited by the processes tests start).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _run_from_the_repository_root(monkeypatch):
    """Paths in diagnostics and goldens are relative to the repository root."""
    monkeypatch.chdir(ROOT)
