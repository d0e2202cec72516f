"""The project's own code, and the trainers' runtime.py, are formatted and lint-clean, like the
code it generates."""

from __future__ import annotations

import subprocess

from tests.helpers import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    from ruff.__main__ import find_ruff_bin

    return subprocess.run(
        [find_ruff_bin(), *args, "resdsl", "tests", "bench", "templates/common/runtime.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_formatted():
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_clean():
    result = ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr
