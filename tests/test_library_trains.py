"""Every library spec's trainer runs, in both backends, so that a construct the trainer does not
handle is found here and not by a user.

The networks themselves are built, counted and compared with torch (and JAX with torch) by
test_torch_model.py and test_jax_model.py. What a trainer does depends on the train section and
on whether the network draws random numbers (dropout, drop path): each library spec is trained
for two iterations as a stand-in with its train section (CIFAR data made synthetic, image-folder
sizes scaled to 64x64 photos) on a small network with the same random layers. Specs whose
stand-ins are the same are trained once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resdsl import ir
from resdsl.compile import compile_spec
from resdsl.frontend import load_spec
from tests.helpers import SPECS
from tests.test_torch_folder import write_tree

FOLDER_SIZE = 64  # the stand-ins of image-folder specs take 64x64 crops


def scaled_step(step):
    """An image-folder step of a 224x224 recipe at the stand-in's 64x64 (photos of 48-140)."""
    sizes = {
        "random_resized_crop": {"size": 48},
        "random_crop": {"size": FOLDER_SIZE},
        "scale_shorter": {"low": 64, "high": 96},
        "single_view": {"resize": 72},
        "ten_crop": {"resize": 72},
        "multiscale": {"scales": (64, 72)},
    }.get(step.op)
    return step if sizes is None else step.model_copy(update=sizes)


def stand_in(spec: ir.Spec, directory: Path) -> ir.Spec:
    """The small network with the spec's random layers, trained by the spec's train section."""
    net, train = spec.network, spec.train
    folder = train.data.kind == "imagefolder"
    size = FOLDER_SIZE if folder else net.input[1]
    dropout = max((s.block.args.get("dropout", 0) for s in net.stages), default=0)
    text = f"""
        network n {{
            input    {net.input[0]}x{size}x{size}
            classes  {3 if folder else net.classes}
            stem     cifar, width 8
            block    basic{f", dropout {dropout}" if dropout else ""}
            shortcut B
            stage a: 1 x 8
            stage b: 1 x 16, stride 2
            {f"head     dropout {net.head.dropout}" if net.head.dropout else ""}
            {f"drop_path {net.drop_path}, rule {net.drop_path_rule}" if net.drop_path else ""}
            {"norm groupnorm 4" if net.norm.kind == "groupnorm" else ""}
        }}
    """
    path = directory / "n.res"
    path.write_text(textwrap.dedent(text))
    small, _ = load_spec(path)
    if folder:
        train = train.model_copy(update={
            "augment": tuple(map(scaled_step, train.augment)),
            "eval": tuple(map(scaled_step, train.eval)),
        })  # fmt: skip
    elif train.data.kind in ("cifar10", "cifar100", "mnist"):  # not on this machine
        train = train.model_copy(update={"data": ir.Dataset(kind="synthetic", path="")})
    return small.model_copy(update={"train": train})


def _key(spec: ir.Spec) -> tuple:
    """What the trainer's code depends on: the kinds of the train section's statements and steps
    and whether the network draws random numbers, not their values."""
    train, net = spec.train, spec.network
    opt, loss = train.optimizer, train.loss
    return (
        net.input[0], bool(net.drop_path), bool(net.head.dropout), net.norm.kind,
        any(s.block.args.get("dropout") for s in net.stages),
        train.data.kind, train.length.unit, train.val_split > 0, train.validate_every is not None,
        tuple((s.op, getattr(s, "mode", None), getattr(s, "source", None)) for s in train.preprocess),
        tuple((s.op, getattr(s, "mode", None), bool(getattr(s, "magnitude_std", 0)))
              for s in train.augment),
        tuple(s.op for s in train.eval),
        opt.kind, getattr(opt, "nesterov", False), opt.norm_weight_decay is not None,
        opt.bias_weight_decay is not None, train.schedule.kind, getattr(train.schedule, "per", None),
        train.warmup.kind if train.warmup else None, loss.kind, bool(loss.label_smoothing),
        getattr(loss, "target_threshold", None) is not None,
        train.mix and (train.mix.mixup is not None, train.mix.cutmix is not None),
        train.ema and train.ema.adjust, train.repeats > 1, train.precision,
    )  # fmt: skip


def _stand_ins() -> dict[str, list[str]]:
    """The distinct stand-ins, each named after the library specs it stands in for."""
    import tempfile

    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for spec_path in SPECS:
            spec = load_spec(spec_path)[0]
            if spec.train is not None:
                found.setdefault(_key(stand_in(spec, Path(directory))), []).append(spec_path)
    return {specs[0]: specs for specs in found.values()}


STAND_INS = _stand_ins()


def test_every_library_spec_with_a_train_section_has_a_stand_in():
    trained = [s for s in SPECS if load_spec(s)[0].train is not None]
    assert sorted(sum(STAND_INS.values(), [])) == sorted(trained)
    assert len(STAND_INS) < len(trained)  # the same paths are trained once


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library") / "photos"
    write_tree(root, train=2, val=1)
    return root


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("spec_path", sorted(STAND_INS))
def test_the_trainer_of_every_library_spec_runs(spec_path, backend, tmp_path, tree):
    spec = stand_in(load_spec(spec_path)[0], tmp_path)
    _, analysis = load_spec(tmp_path / "n.res")
    package = compile_spec(spec, analysis, backend=backend, output=tmp_path / "pkg", force=True)
    folder = spec.train.data.kind == "imagefolder"
    args = ["--out", str(tmp_path / "run"), "--iterations", "2", "--eval-images", "6",
            "--batch-size", "2" if folder else "8", "--log-every", "1", "--no-progress"]  # fmt: skip
    if folder:
        args += ["--data", str(tree), "--workers", "0"]  # decoded in the training process
    result = subprocess.run([sys.executable, str(package / "train.py"), *args],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, f"{STAND_INS[spec_path]}:\n{result.stderr[-3000:]}"
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["iterations"] == 2 and final["backend"] == backend
    assert ("test_ema" in final["results"]) == (spec.train.ema is not None)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["iteration"] == 1 and first["lr"] == pytest.approx(first_lr(spec.train))


def first_lr(train: ir.Train) -> float:
    """The rate of the first iteration: the warm-up's, or the schedule's at its start."""
    warmup, schedule = train.warmup, train.schedule
    if isinstance(warmup, ir.WarmupLinear):
        return train.optimizer.lr * warmup.start_factor
    if warmup is not None:
        return warmup.lr
    if isinstance(schedule, ir.Piecewise):
        return train.optimizer.lr * schedule.points[0][1]
    return train.optimizer.lr
