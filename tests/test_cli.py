"""The command line: check, summary (table and JSON), --version, --help; no torch, no jax."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resdsl import __version__
from tests.helpers import ROOT, SPECS, run_cli


def test_check_every_spec_of_the_library(capsys):
    code, out, err = run_cli(["check", *SPECS], capsys)
    assert code == 0, err
    assert out.count("\nok  ") + out.startswith("ok  ") == len(SPECS)


def test_check_mixed_valid_and_broken(capsys):
    code, out, err = run_cli(
        ["check", "specs/resnet18.res", "tests/specs_with_errors/unknown_stem.res"], capsys
    )
    assert code == 1
    assert "ok  specs/resnet18.res" in out
    assert err.endswith("1 error\n")


def test_check_missing_file(capsys):
    code, _, err = run_cli(["check", "specs/nope.res"], capsys)
    assert code == 1
    assert "no such file: specs/nope.res" in err


def test_summary_table(capsys):
    code, out, _ = run_cli(["summary", "specs/resnet34.res"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("resnet34 (specs/resnet34.res): input 3x224x224, 1000 classes, 34 layers")
    assert lines[2].split() == ["stage", "blocks", "output", "params", "multiply-adds"]
    assert lines[4].split() == ["conv2_x", "3", "64x56x56", "221,952", "693,633,024"]
    assert lines[-1].split()[:3] == ["total", "21,797,672", "3,663,761,408"]


def test_summary_json_is_one_object_with_integer_counts(capsys):
    code, out, _ = run_cli(
        ["summary", "specs/cifar/resnet20.res", "--set", "n=18", "--json"], capsys
    )
    assert code == 0
    data = json.loads(out)
    assert list(data)[:7] == ["name", "input", "classes", "depth", "params", "macs", "stages"]
    assert data["input"] == [3, 32, 32] and data["classes"] == 10
    assert data["depth"] == 110 and data["params"] == 1_727_962
    assert [s["out"] for s in data["stages"]] == [[16, 32, 32], [32, 16, 16], [64, 8, 8]]
    for stage in data["stages"]:
        assert set(stage) == {"name", "blocks", "out", "params", "macs"}
        assert all(isinstance(stage[k], int) for k in ("blocks", "params", "macs"))
    assert data["params"] == sum(s["params"] for s in data["stages"]) + (
        data["stem"]["params"] + data["head"]["params"]
    )


def test_summary_reports_spec_errors(capsys):
    code, out, err = run_cli(["summary", "specs/cifar/resnet20.res", "--set", "k=2"], capsys)
    assert code == 1 and out == ""
    assert "unknown parameter `k`" in err and "hint:" in err


def test_summary_refuses_absurd_sizes_at_once(capsys):
    code, _, err = run_cli(["summary", "specs/cifar/resnet20.res", "--set", "n=1000000000"], capsys)
    assert code == 1
    assert "would have 6,000,000,002 layers" in err


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert (code, out) == (0, f"resdsl {__version__}\n")


def test_help_shows_examples(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert "resdsl summary specs/resnet34.res" in out
    for command in ("check", "summary", "compile"):
        assert command in out


@pytest.mark.parametrize(
    "args",
    [
        ["check", "specs/resnet152.res"],
        ["summary", "specs/resnet152.res", "--json"],
        ["summary", "tests/specs_with_errors/unknown_block_type.res"],
    ],
)
def test_the_compile_path_never_imports_torch_or_jax(args):
    code = (
        "import sys\n"
        "from resdsl.cli import main\n"
        f"sys.argv = ['resdsl', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'flax'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in result.stderr
