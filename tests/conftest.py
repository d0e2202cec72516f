import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

# One XLA compilation cache for the whole run (its workers and the trainers they start): the
# suite compiles the same few networks in many tests, and a compiled step read back from the
# cache is the same executable. A new directory per run, so that every run compiles afresh once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
_CACHE = Path(tempfile.gettempdir()) / f"resdsl-xla-cache-{_RUN}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each, or OpenMP's spinning threads fight for cores
    # (set before torch or jax is imported, and inherited by the processes tests start).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _run_from_the_repository_root(monkeypatch):
    """Paths in diagnostics and goldens are relative to the repository root."""
    monkeypatch.chdir(ROOT)


def pytest_sessionfinish(session):
    """The run's XLA cache goes with the run (removed by the process that started the workers)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(_CACHE, ignore_errors=True)
