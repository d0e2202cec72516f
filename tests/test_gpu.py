"""On a CUDA device (skipped without one): the PyTorch trainer's whole step as a CUDA graph
against its eager step, across learning-rate changes (a new graph each), and a resume under
graphs. Fashion-MNIST is read from /usr/share/datasets/fashion-mnist or, where the machine has
no such package, from the repository's git-ignored .carry/fashion-mnist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import load_spec
from tests.helpers import ROOT, kill_at_checkpoint, logged, torch_checkpoint

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DATA = next(
    (p for p in (Path("/usr/share/datasets/fashion-mnist"), ROOT / ".carry/fashion-mnist")
     if (p / "train-images-idx3-ubyte.gz").is_file()),
    None,
)  # fmt: skip
# 300 iterations: the milestones scale to 150 and 225, so three learning rates, three graphs.
COMMON = ["--iterations", "300", "--log-every", "50", "--eval-images", "2000", "--no-progress",
          "--device", "cuda", "--no-amp", "--data", str(DATA)]  # fmt: skip


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    if DATA is None:
        pytest.skip("Fashion-MNIST is not on this machine")
    out = tmp_path_factory.mktemp("gpu") / "pkg"
    spec, analysis = load_spec(ROOT / "specs/fashion-mnist/resnet20.res")
    compile_spec(spec, analysis, backend="torch", output=out)
    return out


def train(package: Path, run: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(package / "train.py"), "--out", str(run),
                             *COMMON, *args], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads((run / "final.json").read_text())


def test_the_graphed_step_trains_as_the_eager_step_does(package, tmp_path):
    graphed = train(package, tmp_path / "graph", "--cuda-graph")
    eager = train(package, tmp_path / "eager", "--no-cuda-graph", "--no-compile")
    a, b = logged(tmp_path / "graph"), logged(tmp_path / "eager")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    assert [r.get("lr") for r in a] == [r.get("lr") for r in b]  # 0.1, then 0.01 and 0.001
    for x, y in zip(a, b, strict=True):
        if "train_loss" in x:  # float32 both: the same steps up to the GPU's summation order
            assert abs(x["train_loss"] - y["train_loss"]) < 0.1, (x, y)
    assert graphed["test_top1_error"] < 0.35 and eager["test_top1_error"] < 0.35
    assert abs(graphed["test_top1_error"] - eager["test_top1_error"]) < 0.05


def test_a_graphed_run_resumes(package, tmp_path):
    longer = [
        "--cuda-graph",
        "--iterations",
        "2000",
        "--checkpoint-every",
        "500",
    ]  # a second or two
    whole = train(package, tmp_path / "whole", *longer)
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(package / "train.py"), "--out", str(run),
                                *COMMON, *longer],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    killed_at = kill_at_checkpoint(
        process, lambda: torch_checkpoint(run / "checkpoint.pt")["iteration"], 500, timeout=600
    )
    resumed = train(package, run, *longer, "--resume")
    assert killed_at < 2000 and resumed["iterations"] == 2000
    assert abs(whole["test_top1_error"] - resumed["test_top1_error"]) < 0.05
