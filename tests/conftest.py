import os

import pytest

from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def _run_from_the_repository_root(monkeypatch):
    """Paths in diagnostics and goldens are relative to the repository root."""
    monkeypatch.chdir(ROOT)
    os.environ.setdefault("PYTHONHASHSEED", "0")
