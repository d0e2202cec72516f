"""`resdsl show`: the per-block table (its totals are the analysis's), the picture in the
layout of the paper's Fig. 3 (PNG and SVG), and its refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl.frontend import load_spec
from resdsl.picture import figure
from resdsl.table import table
from tests.helpers import ROOT, run_cli


def rows(text: str) -> dict[str, list[str]]:
    """The table's rows by their first cell, split on runs of two or more spaces."""
    out = {}
    for line in text.splitlines()[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        out[cells[0]] = cells[1:]
    return out


def test_the_table_of_resnet20(capsys):
    code, out, err = run_cli(["show", "specs/cifar/resnet20.res"], capsys)
    assert code == 0, err
    table_ = rows(out)
    assert table_["stem"] == ["3x3 conv 16, BN, ReLU", "16x32x32", "464"]
    assert table_["layer1.0-2 (x3)"] == [
        "3x3 conv 16, BN, ReLU, 3x3 conv 16, BN, add, ReLU", "+ identity", "16x32x32", "14,016"
    ]  # fmt: skip
    assert table_["layer2.0"] == [
        "3x3/2 conv 32, BN, ReLU, 3x3 conv 32, BN, add, ReLU", "+ pad A", "32x16x16", "13,952"
    ]  # fmt: skip
    assert table_["layer3.1-2 (x2)"][-2:] == ["64x8x8", "147,968"]
    assert table_["head"] == ["global avg pool, fc 10", "10x1x1", "650"]
    assert table_["total"] == ["269,722"]
    assert out.startswith("resnet20 (specs/cifar/resnet20.res): input 3x32x32, 10 classes")


def test_one_row_per_layer(capsys):
    code, out, err = run_cli(["show", "specs/resnet34.res", "--layers"], capsys)
    assert code == 0, err
    table_ = rows(out)
    assert table_["stem.conv1"] == ["7x7/2 conv 64", "64x112x112", "9,408"]
    assert table_["stem.maxpool"] == ["3x3/2 max pool", "64x56x56"]
    assert table_["layer2.0.downsample.0"] == ["1x1/2 conv 128", "128x28x28", "8,192"]
    assert table_["fc"] == ["fc 1000", "1000x1x1", "513,000"]
    assert table_["total"] == ["21,797,672"]


SPECS = [
    "specs/resnet34.res",
    "specs/cifar/resnet20.res",
    "specs/cifar/resnet1202.res",
    "specs/variants/se_resnet50.res",
    "specs/variants/preact_resnet164.res",
    "specs/variants/resnet50_d.res",
    "specs/torchvision/resnext50_32x4d.res",
    "specs/plain34.res",
    "specs/cifar/resnet110_stochastic_depth.res",
]


@pytest.mark.parametrize("path", SPECS)
@pytest.mark.parametrize("layers", [False, True], ids=["blocks", "layers"])
def test_the_params_column_adds_up_to_the_analysis(path, layers):
    spec, analysis = load_spec(ROOT / path)
    text = table(spec, analysis, layers=layers)
    body = text.split("\n-")[0].splitlines()[3:]
    column = sum(int(line.split()[-1].replace(",", "")) for line in body
                 if line.split()[-1].replace(",", "").isdigit())  # fmt: skip
    assert column == analysis.params
    assert rows(text)["total"] == [f"{analysis.params:,}"]


def test_resnet1202_stays_readable():
    spec, analysis = load_spec(ROOT / "specs/cifar/resnet1202.res")
    text = table(spec, analysis)
    assert len(text.splitlines()) < 15
    assert "layer1.0-199 (x200)" in text and "layer3.1-199 (x199)" in text
    drawn = figure(analysis)
    assert drawn.per_block and len(drawn.boxes) < 12


def test_the_figure_follows_the_papers_fig3():
    _, analysis = load_spec(ROOT / "specs/resnet34.res")
    drawn = figure(analysis)
    texts = [box.text for box in drawn.boxes]
    assert texts[:3] == ["7x7 conv, 64, /2", "3x3 max pool, /2", "3x3 conv, 64"]
    assert texts[-2:] == ["avg pool", "fc 1000"]
    assert texts.count("3x3 conv, 128, /2") == 1 and len(texts) == 34 + 2
    assert [a.style for a in drawn.arcs].count("projection") == 3
    assert [a.style for a in drawn.arcs].count("identity") == 13
    assert [(name, size) for _, _, name, size in drawn.stages] == [
        ("conv2_x", "56x56"), ("conv3_x", "28x28"), ("conv4_x", "14x14"), ("conv5_x", "7x7")
    ]  # fmt: skip
    _, analysis = load_spec(ROOT / "specs/cifar/resnet20.res")
    assert {a.style for a in figure(analysis).arcs} == {"identity", "free"}
    _, analysis = load_spec(ROOT / "specs/plain34.res")
    assert figure(analysis).arcs == []


@pytest.mark.parametrize(
    "path, suffix",
    [("specs/resnet34.res", ".png"), ("specs/cifar/resnet20.res", ".svg"),
     ("specs/variants/se_resnet50.res", ".png")],
)  # fmt: skip
def test_the_picture(path, suffix, tmp_path, capsys):
    out = tmp_path / "deep" / f"net{suffix}"
    code, stdout, err = run_cli(["show", path, "-o", str(out)], capsys)
    assert code == 0, err
    assert stdout == f"wrote {out.as_posix()}\n"
    data = out.read_bytes()
    assert len(data) > 10_000
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        text = data.decode()
        assert text.startswith("<?xml") and "<svg" in text
        for label in ("3x3 conv, 32, /2", "16x16", "identity shortcut", "fc 10"):
            assert label in text
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_the_picture_with_set(tmp_path, capsys):
    out = tmp_path / "r1202.svg"
    code, _, err = run_cli(["show", "specs/cifar/resnet20.res", "--set", "n=200", "-o",
                            str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert "200 \u00d7 [3x3, 16 \u00b7 3x3, 16]" in out.read_text()


def test_refusals_are_one_line_diagnostics(tmp_path, capsys):
    code, out, err = run_cli(["show", "specs/resnet34.res", "-o", str(tmp_path / "f.pdf")], capsys)
    assert code == 1 and out == ""
    assert "f.pdf: the picture's name must end in .png or .svg" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(["show", "specs/resnet34.res", "-o", str(blocker / "f.png")], capsys)
    assert code == 1 and "is not a directory" in err and "Traceback" not in err
    (tmp_path / "dir.png").mkdir()
    code, _, err = run_cli(["show", "specs/resnet34.res", "-o", str(tmp_path / "dir.png")], capsys)
    assert code == 1 and "cannot write it" in err and "Traceback" not in err
    code, _, err = run_cli(["show", "specs/resnet34.res", "--layers", "-o", "x.png"], capsys)
    assert code == 1 and "--layers is for the table" in err and not Path("x.png").exists()
    code, _, err = run_cli(["show", str(tmp_path / "missing.res")], capsys)
    assert code == 1 and "error:" in err and "Traceback" not in err
    bad = tmp_path / "bad.res"
    bad.write_text("network x {\n    input 3x32x32\n    classes 10\n    stem nope\n}\n")
    code, _, err = run_cli(["show", str(bad)], capsys)
    assert code == 1 and f"{bad.as_posix()}:4:" in err and "Traceback" not in err


def test_help_has_an_example(capsys):
    code, out, _ = run_cli(["show", "--help"], capsys)
    assert code == 0 and "resdsl show specs/resnet34.res -o resnet34.png" in out


def test_the_table_imports_no_matplotlib():
    code = (
        "import sys\n"
        "from resdsl.cli import main\n"
        "sys.argv = ['resdsl', 'show', 'specs/cifar/resnet20.res']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'jax', 'flax', 'matplotlib'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in result.stderr


def test_the_readme_shows_what_show_prints(capsys):
    readme = (ROOT / "README.md").read_text()
    _, out, _ = run_cli(["show", "specs/cifar/resnet20.res"], capsys)
    assert f"$ .venv/bin/resdsl show specs/cifar/resnet20.res\n{out}```" in readme
    figure_ = ROOT / "docs/figures/resnet34.png"
    assert "docs/figures/resnet34.png" in readme
    data = figure_.read_bytes()
    assert data.startswith(b"\x89PNG") and 10_000 < len(data) < 200_000


def test_blocks_differing_only_in_their_drop_path_rate_fold(capsys):
    code, out, err = run_cli(["show", "specs/cifar/resnet110_stochastic_depth.res"], capsys)
    assert code == 0, err
    table_ = rows(out)
    assert table_["layer1.0-17 (x18)"][0].endswith("drop path 0.00926-0.167, add, ReLU")
    assert table_["layer2.0"][0].endswith("drop path 0.176, add, ReLU")
    assert len(out.splitlines()) == 13 and "a drop path range spans their rates" in out


def test_registering_show_imports_neither_the_front_end_nor_the_drawing():
    code = (
        "import sys\nimport resdsl.cli\n"
        "print(sorted(m for m in sys.modules if m in ('resdsl.picture', 'resdsl.table', 'resdsl.analysis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
