"""Broken specs and the exact diagnostics each must produce (snapshots).

Regenerate the snapshots with `make goldens` after an intended change of wording.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli

BROKEN = sorted((ROOT / "tests" / "specs_with_errors").glob("*.res"))


def test_there_are_at_least_30_broken_specs():
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("spec", BROKEN, ids=lambda p: p.stem)
def test_diagnostics_match_snapshot(spec, capsys):
    path = spec.relative_to(ROOT).as_posix()
    code, out, err = run_cli(["check", path], capsys)
    assert code == 1, out + err
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith(f"{path}:"), err  # file:line:col first
    assert err == spec.with_suffix(".expected").read_text(encoding="utf-8")


def test_all_broken_specs_in_one_check_report_everything(capsys):
    paths = [p.relative_to(ROOT).as_posix() for p in BROKEN]
    code, _, err = run_cli(["check", *paths], capsys)
    assert code == 1
    for path in paths:
        assert f"{path}:" in err


@pytest.mark.parametrize("name", ["unknown_block_type", "missing_closing_brace", "too_deep"])
def test_no_traceback_in_a_real_process(name):
    spec = f"tests/specs_with_errors/{name}.res"
    result = subprocess.run(
        [sys.executable, "-m", "resdsl.cli", "check", spec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{spec}:")
