"""The PyTorch trainer's recipes beyond the paper's, each piece against the implementation users
trust: LAMB and the no-decay groups against timm, BCE against timm's, repeated augmentation's
order against timm's RepeatAugSampler (torchvision's RASampler), the EMA against
torch.optim.swa_utils with torchvision's adjustment, torchvision's photo augmentations per seed,
MixUp and CutMix's label weights; every library recipe trains, and a run resumes exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, kill_at_checkpoint, logged, torch_checkpoint
from tests.test_torch_folder import write_tree
from tests.test_torch_trainer import compile_to, import_package, run_train, write_spec

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
import timm.data.distributed_sampler  # noqa: E402
import timm.data.mixup  # noqa: E402
import timm.loss  # noqa: E402
import timm.optim  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")

# a tiny network on image folders, trained with a library recipe (2-4 iterations of batch 4)
TINY_FOLDER = """
    network tiny {
        input    3x64x64
        classes  3
        stem     cifar, width 8
        block    basic
        shortcut B
        stage a: 1 x 8
        stage b: 1 x 16, stride 2
    }
    train %s {
        batch 4%s
    }
"""
# the same on synthetic arrays, for the pieces that do not need photos
TINY_ARRAYS = """
    network tiny {
        input    3x16x16
        classes  10
        stem     cifar, width 8
        block    basic
        shortcut B
        stage a: 1 x 8
        stage b: 1 x 16, stride 2
    }
    train {
        data      synthetic
        augment   pad 2 reflect, random_crop 16, hflip
        %s
        length    2 epochs
        eval      single_view, flip_average
    }
"""


def package_of(tmp_path: Path, text: str, name: str = "pkg") -> Path:
    return compile_to(write_spec(tmp_path, text, f"{name}.res"), tmp_path / name)


@pytest.fixture(scope="module")
def lamb_package(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("lamb")
    text = TINY_ARRAYS % (
        "optimizer lamb, lr 0.01, weight_decay 0.02, norm_weight_decay 0, bias_weight_decay 0\n"
        "        batch     64, repeated_augmentation 3\n"
        "        loss      bce, label_smoothing 0.1, target_threshold 0.2\n"
        "        mix       mixup 0.2, cutmix 1.0\n"
        "        ema       decay 0.999, every 4, adjust"
    )
    return import_package(package_of(directory, text))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images") / "imagenet"
    write_tree(root)
    return root


# --- the optimizer -----------------------------------------------------------------------------
def test_parameter_groups_are_timms_no_decay_on_biases_and_norm_weights(lamb_package):
    train, model = lamb_package["train"], lamb_package["model"].build_model()
    groups = train.parameter_groups(model)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {id(p) for g in groups if g["weight_decay"] == 0.02 for p in g["params"]}
    reference = timm.optim.param_groups_weight_decay(model, 0.02)  # ndim <= 1 or a bias
    assert no_decay == {id(p) for g in reference if g["weight_decay"] == 0 for p in g["params"]}
    assert decay == {id(p) for g in reference if g["weight_decay"] == 0.02 for p in g["params"]}
    assert len(no_decay) + len(decay) == len(list(model.parameters()))


def test_a_lamb_step_equals_timms_lamb(lamb_package):
    train, build = lamb_package["train"], lamb_package["model"].build_model
    torch.manual_seed(0)
    ours, theirs = build(), build()
    theirs.load_state_dict(ours.state_dict())
    mine = train.lamb(train.parameter_groups(ours))
    reference = timm.optim.Lamb(
        timm.optim.param_groups_weight_decay(theirs, 0.02), lr=0.01, weight_decay=0.02
    )
    assert train.MAX_GRAD_NORM == 1.0 and reference.defaults["max_grad_norm"] == 1.0
    images = torch.randn(8, 3, 16, 16)
    for step in range(3):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            # large enough that the global norm is clipped in the first steps
            (model(images).square().mean() * 100).backward()
            optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_an_adamw_package_uses_torchs_adamw(tmp_path):
    pkg = import_package(package_of(tmp_path, TINY_ARRAYS % (
        "optimizer adamw, lr 0.001, betas 0.8 0.99, eps 1e-7, weight_decay 0.05\n"
        "        batch     64"
    )))  # fmt: skip
    optimizer = pkg["train"].adamw(pkg["model"].build_model().parameters())
    assert type(optimizer) is torch.optim.AdamW
    assert {k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay")} == {
        "lr": 0.001, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.05
    }  # fmt: skip
    source = (tmp_path / "pkg" / "train.py").read_text()
    for absent in ("Lamb", "SGD", "parameter_groups", "MixUp", "AveragedModel", "REPEATS"):
        assert absent not in source, absent


# --- the loss and the mixing ---------------------------------------------------------------------
def test_bce_equals_timms_binary_cross_entropy(lamb_package):
    criterion = lamb_package["train"].criterion
    torch.manual_seed(1)
    logits, labels = torch.randn(6, 10), torch.tensor([0, 3, 9, 2, 2, 5])
    timms = timm.loss.BinaryCrossEntropy(smoothing=0.1, target_threshold=0.2)
    torch.testing.assert_close(criterion(logits, labels), timms(logits, labels))
    # mixed labels: timm smooths them when it mixes (mixup_target), then thresholds
    lam = 0.7
    mixed = timm.data.mixup.mixup_target(labels, 10, lam, smoothing=0.0)
    smoothed = timm.data.mixup.mixup_target(labels, 10, lam, smoothing=0.1)
    torch.testing.assert_close(criterion(logits, mixed), timms(logits, smoothed))


def test_mixing_gives_label_weights_of_the_mixed_pixels(lamb_package):
    mixing = lamb_package["train"].batch_mixing()
    torch.manual_seed(3)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.arange(8) % 10
    seen = set()
    for _ in range(20):
        mixed, targets = mixing(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 10)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        own = targets[torch.arange(8), labels]  # the weight of each image's own label
        partner = targets[torch.arange(8), labels.roll(1)]  # of the label it is mixed with
        torch.testing.assert_close(own + partner, torch.ones(8))
        kept = (mixed == images).all(1).float().mean((1, 2))  # pixels left as they were
        if bool(((kept > 0) & (kept < 1)).all()):  # CutMix: the box's share of the image
            seen.add("cutmix")
            torch.testing.assert_close(own, kept)
        else:  # MixUp: one lambda for the batch
            seen.add("mixup")
            lam = own[0]
            torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    assert seen == {"mixup", "cutmix"}


# --- repeated augmentation ----------------------------------------------------------------------
def timm_order(monkeypatch, permutation: torch.Tensor, count: int, rank: int, world: int, repeats):
    """The indices of timm's RepeatAugSampler (torchvision's RASampler) on this permutation."""
    sampler = timm.data.distributed_sampler.RepeatAugSampler(
        list(range(count)), num_replicas=world, rank=rank, num_repeats=repeats
    )
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: permutation.clone())
    indices = list(sampler)
    monkeypatch.undo()
    return indices


def test_repeated_augmentation_follows_rasampler_on_arrays(lamb_package, monkeypatch):
    data = lamb_package["data"]
    world, batch = 2, 64
    shards = [data.ArrayData("", torch.device("cpu"), batch_size=batch, seed=4, rank=r,
                             world=world) for r in range(world)]  # fmt: skip
    count = len(shards[0].train_labels)  # 10,000 synthetic images: 156 batches of 64
    generator = torch.Generator()
    generator.set_state(shards[0].generator.get_state())
    data_order = shards[0].order
    assert torch.equal(data_order, torch.randperm(count, generator=torch.Generator().manual_seed(4))
                       .repeat_interleave(3)[:count])  # fmt: skip
    permutation = data_order[::3]  # the epoch's permutation (its first count / 3 images)
    permutation = torch.cat([permutation, torch.tensor([i for i in range(count)
                             if i not in set(permutation.tolist())])])  # fmt: skip
    for rank, shard in enumerate(shards):
        ours = [int(i) for _ in range(count // batch) for i in shard.next_draws()["index"]]
        assert ours == timm_order(monkeypatch, permutation, count, rank, world, 3)
    assert data.REPEATS == 3


def test_repeated_augmentation_follows_rasampler_on_image_folders(tmp_path, monkeypatch):
    pkg = import_package(package_of(tmp_path, TINY_FOLDER % ("torchvision_v2", "")))
    data = pkg["data"]
    count, batch, world = 512, 16, 2  # 512 images: 256-rounding leaves the epoch whole
    permutation = torch.from_numpy(data.epoch_order(5, 0, count))
    for rank in range(world):
        order = data.TrainingOrder(count, batch, 5, rank, world, epoch=0, position=0)
        batches = iter(order)
        ours = [index for _ in range(count // batch) for _, _, index in next(batches)]
        assert ours == timm_order(monkeypatch, permutation, count, rank, world, 4)


# --- the average of the weights --------------------------------------------------------------
def test_the_average_is_torchs_with_torchvisions_adjusted_decay(lamb_package):
    train = lamb_package["train"]
    model = lamb_package["model"].build_model()
    ema = train.moving_average(model, 64, 2.0)
    # references/classification/train.py: adjust = world x batch per process x steps / epochs
    adjust = 64 * train.EMA_EVERY / 2.0
    decay = 1.0 - min(1.0, (1.0 - train.EMA_DECAY) * adjust)
    weights = []
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        ema.update_parameters(model)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = weights[0]  # the first update copies
    for later in weights[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * later[k] if v.is_floating_point()
                    else v for k, v in later.items()}  # fmt: skip
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], msg=name)


# --- torchvision's photo augmentations in the loader ------------------------------------------
def test_photo_augmentations_depend_on_the_seed_and_position_alone(tmp_path, tree):
    pkg = import_package(package_of(tmp_path, TINY_FOLDER % ("rsb_a2", "")))
    data = pkg["data"]
    paths, labels = data.list_images(tree)["train"]
    images = data.TrainingImages(tree, paths, labels, 0)
    first = images.sample((0, 3, 5))[0]
    assert first.shape == (3, 224, 224) and first.dtype == np.float32  # rsb_a2's crop
    assert np.array_equal(first, images.sample((0, 3, 5))[0])  # the same draws again
    assert not np.array_equal(first, images.sample((0, 4, 5))[0])  # another position
    # normalized by ImageNet's statistics: pixels in [0, 1] become [-0.485/0.229, ...]
    low = (0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    high = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert (first.min(axis=(1, 2)) >= low - 1e-5).all()
    assert (first.max(axis=(1, 2)) <= high + 1e-5).all()
    rng = torch.get_rng_state()
    images.sample((1, 0, 2))
    assert torch.equal(rng, torch.get_rng_state())  # the process's own generator is untouched


def test_random_erasing_runs_last_on_the_normalized_image(tmp_path, tree):
    pkg = import_package(package_of(tmp_path, TINY_FOLDER % (
        "torchvision_v2", "\n        augment random_resized_crop 48, random_erasing 0.999"
    )))  # fmt: skip
    data = pkg["data"]
    paths, labels = data.list_images(tree)["train"]
    images = data.TrainingImages(tree, paths, labels, 0)
    erased = [images.sample((0, position, 1))[0] for position in range(8)]
    assert all(pixels.shape == (3, 48, 48) for pixels in erased)
    # a rectangle of zeros (ImageNet's mean after normalization) in (nearly) every image
    zeros = [(pixels == 0).all(0).sum() for pixels in erased]
    assert sum(z > 0 for z in zeros) >= 7, zeros


# --- the library recipes train (each recipe's stand-in: tests/test_library_trains.py) --------
@pytest.mark.long
@pytest.mark.slow
def test_the_fast_recipe_resumes_exactly_with_mixing_and_an_average(tmp_path):
    assert (FASHION / "train-images-idx3-ubyte.gz").exists()
    spec = write_spec(tmp_path, f"""
        network resnet20 extends "{ROOT}/specs/fashion-mnist/resnet20_fast.res"
        train {{
            mix mixup 0.2, cutmix 1.0
            ema decay 0.9, every 2
        }}
    """)  # fmt: skip
    package = compile_to(spec, tmp_path / "pkg")
    common = ["--iterations", "16", "--batch-size", "16", "--checkpoint-every", "4",
              "--eval-images", "100", "--log-every", "2"]  # fmt: skip
    assert run_train(package, "--out", str(tmp_path / "a"), *common).returncode == 0
    torch_checkpoint(tmp_path / "a" / "checkpoint.pt")
    run = tmp_path / "b"
    process = subprocess.Popen(
        [sys.executable, str(package / "train.py"), "--no-progress", "--out", str(run), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = kill_at_checkpoint(
        process, lambda: torch_checkpoint(run / "checkpoint.pt")["iteration"], 4, timeout=300
    )
    assert killed_at < 16, "the run ended before it could be killed"
    resumed = run_train(package, "--out", str(run), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    a = torch_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = torch_checkpoint(run / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert logged(tmp_path / "a") == logged(run)
    lrs = [r["lr"] for r in logged(run) if "lr" in r]
    # piecewise 0 -> 1 at a fifth -> 0, sampled every 2 of 16 iterations (the rate of the last)
    expected = [0.4 * float(np.interp(i / 16, (0, 0.2, 1), (0, 1, 0))) for i in range(1, 16, 2)]
    assert lrs == pytest.approx(expected)
    final = json.loads((run / "final.json").read_text())
    assert set(final["results"]) == {"test", "test_ema"}
    assert set(final["results"]["test"]) == {"flip_average"}
    assert math.isfinite(final["test_top1_error"])


# --- the memory format on the CPU ---------------------------------------------------------------
def test_channels_last_on_the_cpu_unless_a_strided_1x1_meets_avx512(tmp_path):
    """torch 2.14.1's channels_last backward of strided 1x1 convolutions corrupts memory on
    AVX-512 CPUs: networks with one keep the contiguous format there, the others gain speed."""
    cpu = torch.device("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    for spec, strided in (("specs/fashion-mnist/resnet20.res", False),
                          ("specs/cifar/resnet20.res", False), ("specs/resnet50.res", True)):  # fmt: skip
        pkg = import_package(compile_to(ROOT / spec, tmp_path / spec.replace("/", "_")))
        train = pkg["train"]
        args = train.parse_args(["--device", "cpu"])
        train.choose_defaults(args, cpu, 1)
        assert args.channels_last == (not strided or capability != "AVX512"), spec
        args = train.parse_args(["--device", "cpu", "--no-channels-last"])
        train.choose_defaults(args, cpu, 1)
        assert args.memory_format == torch.contiguous_format


def test_validation_with_a_scheduler_of_torch(tmp_path):
    package = package_of(tmp_path, """
        network n {
            input    3x16x16
            classes  10
            stem     cifar, width 8
            block    basic
            shortcut B
            stage a: 1 x 8
        }
        train {
            data     synthetic
            schedule cosine
            warmup   linear from 0.1 for 2
            validate every 3
            length   8 iterations
            batch    16
            optimizer sgd, lr 0.1
            eval     single_view
        }
    """)  # fmt: skip
    result = run_train(package, "--out", str(tmp_path / "run"), "--eval-images", "50")
    assert result.returncode == 0, result.stderr
    splits = [r["iteration"] for r in logged(tmp_path / "run") if "split" in r]
    assert splits == [3, 6, 8]  # validations on the test split (no val_split), then the end
