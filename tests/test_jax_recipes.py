"""The JAX trainer's new train statements against what the PyTorch package uses: the learning rate
of every iteration against torch.optim.lr_scheduler's; AdamW, LAMB and SGD with parameter groups
against torch.optim.AdamW, timm's Lamb and torch.optim.SGD; label smoothing and BCE against torch
and timm; mixup and cutmix against torchvision's v2.MixUp and v2.CutMix; the moving average against
torch.optim.swa_utils.AveragedModel; normalize, reflect padding, repeated augmentation and flip
averaging on arrays against the PyTorch pipeline; the image-folder pipeline's new steps in the JAX
loader; short runs of the fast Fashion-MNIST recipe and of tiny torchvision_v2 and rsb_a2 specs.
"""

from __future__ import annotations

import ast
import collections
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import build_files
from resdsl.frontend import load_spec
from tests.helpers import ROOT
from tests.test_jax_trainer import compile_jax, compile_torch, mesh
from tests.test_torch_folder import write_tree
from tests.test_torch_trainer import import_package, write_cifar10, write_spec

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
timm_loss = pytest.importorskip("timm.loss")
timm_optim = pytest.importorskip("timm.optim")
v2 = pytest.importorskip("torchvision.transforms.v2")
jnp = jax.numpy

SMALL_NETWORK = """
network small {
    input    3x16x16
    classes  10
    stem     cifar, width 8
    block    basic
    shortcut B
    stage: 1 x 8
    stage: 1 x 16, stride 2
}
"""


def small(optimizer: str, *lines: str) -> str:
    """A spec of the small network on synthetic arrays: `lines` of its train section, a batch of
    16 and 40 iterations unless they say otherwise."""
    given = {line.split()[0] for line in lines}
    body = ["data synthetic", f"optimizer {optimizer}", *lines]
    body += [line for line in ("batch 16", "length 40 iterations") if line.split()[0] not in given]
    return (
        SMALL_NETWORK
        + "train {\n"
        + "".join(f"    {line}\n" for line in body)
        + ("    eval single_view\n}\n")
    )


# torchvision_v2's statements on synthetic arrays: SGD without decay on BN, label smoothing,
# mixup or cutmix, an adjusted EMA after a linear warm-up, a given normalization, reflect padding
# and repeated augmentation
V2_LIKE = small(
    "sgd, lr 0.1, momentum 0.9, weight_decay 2e-5, norm_weight_decay 0",
    "preprocess normalize mean 0.4 0.5 0.6 std 0.2 0.25 0.3",
    "augment pad 2 reflect, random_crop 16, hflip",
    "batch 16, repeated_augmentation 3",
    "loss cross_entropy, label_smoothing 0.1",
    "mix mixup 0.2, cutmix 1.0",
    "schedule cosine",
    "warmup linear from 0.01 for 5",
    "ema decay 0.99, every 2, adjust",
)
# rsb_a2's: LAMB without decay on BN and biases, BCE smoothed and thresholded, mixing, bf16
A2_LIKE = small(
    "lamb, lr 0.005, weight_decay 0.02, norm_weight_decay 0, bias_weight_decay 0",
    "loss bce, label_smoothing 0.1, target_threshold 0.2",
    "mix mixup 0.1, cutmix 1.0",
    "schedule cosine",
    "warmup linear from 0.002 for 5",
    "precision bf16",
)
ADAMW = small(
    "adamw, lr 0.01, betas 0.8 0.99, eps 1e-6, weight_decay 0.05, norm_weight_decay 0, "
    "bias_weight_decay 0.01",
    "loss bce, target_threshold 0.2",
)
LAMB_PLAIN = small(
    "lamb, lr 0.01, weight_decay 0.02, max_grad_norm 0", "loss bce, label_smoothing 0.1"
)
# tiny image-folder specs of the two ImageNet recipes (the networks of test_torch_folder)
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
    train %s
"""
TINY_V2 = (
    TINY_FOLDER
    % """torchvision_v2 {
        augment  random_resized_crop 48, hflip, trivial_augment_wide, random_erasing 0.1
        batch    4, repeated_augmentation 2
        length   3 epochs
        warmup   linear from 0.01 for 1
        ema      decay 0.99998, every 2, adjust
    }"""
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """The JAX (and where compared, PyTorch) packages of the specs above, imported, compiled once."""
    cache = {}

    def get(spec: str | Path, backend: str = "jax") -> dict:
        """`spec`: a spec's text, or the path of one."""
        if (spec, backend) not in cache:
            directory = tmp_path_factory.mktemp("recipe")
            compile_ = compile_jax if backend == "jax" else compile_torch
            path = spec if isinstance(spec, Path) else write_spec(directory, spec)
            package = compile_(path, directory / backend)
            sys.modules.pop("weights", None)  # train.py's, of this package, not the last one's
            cache[spec, backend] = import_package(package)
            sys.modules.pop("weights", None)
        return cache[spec, backend]

    return get


@pytest.fixture(scope="module")
def run_jax():
    """Run a package's train.py in a subprocess on the CPU (with the run's XLA compilation cache,
    which conftest.py puts in the environment)."""

    def run(package: Path, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(package / "train.py"), "--no-progress", *args]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        return subprocess.run(command, env=env, cwd=package.parent, capture_output=True, text=True)

    return run


# --- the learning rate -------------------------------------------------------------------------
def torch_rates(make, total: int, iterations_per_epoch: int | None = None) -> list[float]:
    """The lr of each iteration from torch.optim.lr_scheduler: `make(optimizer)` builds the
    scheduler, stepped every iteration, or every epoch of `iterations_per_epoch`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make(optimizer)
    rates = []
    for iteration in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if iterations_per_epoch is None or (iteration + 1) % iterations_per_epoch == 0:
            scheduler.step()
    return rates


def jax_rates(train, total: int, spec_total: int, iterations_per_epoch: int = 7) -> list[float]:
    """The lr of each iteration from the JAX package's LearningRate, given what it asks for."""
    given = {"total": total, "spec_total": spec_total, "iterations_per_epoch": iterations_per_epoch}
    wanted = inspect.signature(train.LearningRate).parameters
    schedule = train.LearningRate(**{name: given[name] for name in wanted})
    return [schedule.lr(i) for i in range(total)]


S = torch.optim.lr_scheduler


def linear_then_cosine(start: float, warmup: int, steps: int, min_lr: float = 0.0):
    def make(optimizer):  # the PyTorch package's order: the main scheduler first
        main = S.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup), eta_min=min_lr)
        warm = S.LinearLR(optimizer, start_factor=start, total_iters=warmup)
        return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])

    return make


def constant_then_cosine(factor: float, warmup: int, steps: int):
    def make(optimizer):
        main = S.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup))
        warm = S.ConstantLR(optimizer, factor=factor, total_iters=warmup)
        return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])

    return make


def linear_then_multistep(start: float, warmup: int, milestones: list[int], gamma: float):
    def make(optimizer):
        main = S.MultiStepLR(optimizer, milestones, gamma=gamma)
        warm = S.LinearLR(optimizer, start_factor=start, total_iters=warmup)
        return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])

    return make


def piecewise(points: list[tuple[float, float]], steps: int):
    fractions, factors = zip(*points)
    return lambda optimizer: S.LambdaLR(
        optimizer, lambda step: float(np.interp(step / steps, fractions, factors))
    )


# (train lines, apart by "\n ", total iterations, spec's total, iterations per epoch (None: stepped every
# iteration), torch's scheduler with the counts the PyTorch package derives)
LR_CASES = {
    "linear warm-up, cosine per iteration": (
        "schedule cosine, min_lr 0.001\n warmup linear from 0.1 for 5",
        40, 40, None, linear_then_cosine(0.1, 5, 40, 0.001),
    ),
    "the same, shortened by --iterations": (
        "schedule cosine, min_lr 0.001\n warmup linear from 0.1 for 5",
        25, 40, None, linear_then_cosine(0.1, 3, 25, 0.001),  # warm-up round(5 * 25 / 40)
    ),
    "linear warm-up, cosine per epoch": (
        "schedule cosine, per epoch\n warmup linear from 0.01 for 2\n length 6 epochs",
        42, 42, 7, linear_then_cosine(0.01, 2, 6),
    ),
    "the same, shortened to a part of an epoch": (
        "schedule cosine, per epoch\n warmup linear from 0.01 for 2\n length 6 epochs",
        30, 42, 7, linear_then_cosine(0.01, 1, 4),  # round(30 / 7) epochs, round(2 * 30 / 42)
    ),
    "piecewise": (
        "schedule piecewise 0: 0, 0.2: 1, 1: 0\n length 5 epochs",
        35, 35, None, piecewise([(0, 0), (0.2, 1), (1, 0)], 35),
    ),
    "piecewise, shortened": (
        "schedule piecewise 0: 0.1, 0.3: 1, 0.5: 0.5, 1: 0.01\n length 5 epochs",
        20, 35, None, piecewise([(0, 0.1), (0.3, 1), (0.5, 0.5), (1, 0.01)], 20),
    ),
    "linear warm-up, multistep": (
        "schedule lr * 0.1 at 20, 30\n warmup linear from 0.1 for 5",
        40, 40, None, linear_then_multistep(0.1, 5, [15, 25], 0.1),  # after the warm-up's 5
    ),
    "the same, shortened: milestones at the warm-up's end, twice": (
        "schedule lr * 0.1 at 20, 30\n warmup linear from 0.1 for 5",
        3, 40, None, linear_then_multistep(0.1, 1, [1, 1], 0.1),  # both round to 2, less 1
    ),
    "constant warm-up, cosine": (
        "schedule cosine\n warmup lr 0.01 for 5", 40, 40, None, constant_then_cosine(0.1, 5, 40),
    ),
    "linear warm-up, then constant": (
        "warmup linear from 0.2 for 5",
        40, 40, None, lambda o: S.LinearLR(o, start_factor=0.2, total_iters=5),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", LR_CASES)
def test_the_lr_of_every_iteration_is_torch_lr_schedulers(packages, case):
    lines, total, spec_total, per_epoch, make = LR_CASES[case]
    train = packages(small("sgd, lr 0.1", *lines.split("\n ")))["train"]
    expected = torch_rates(make, total, per_epoch)
    ours = jax_rates(train, total, spec_total)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-15)
    assert len(set(np.round(expected, 12))) > 2  # the schedule moves


def test_the_schedule_is_the_torch_packages_with_validation(packages):
    """The lr_scheduler of the PyTorch package itself, and `validate every` scaled."""
    text = small(
        "sgd, lr 0.1", "schedule cosine", "warmup linear from 0.1 for 5", "validate every 10"
    )
    train, theirs = packages(text)["train"], packages(text, "torch")["train"]
    for total in (40, 17):
        expected = torch_rates(lambda o, t=total: theirs.lr_scheduler(o, t, 40), total)
        np.testing.assert_allclose(jax_rates(train, total, 40), expected, rtol=1e-9, atol=1e-15)
        assert train.LearningRate(total, 40).validate_every == round(10 * total / 40)


# --- optimizers --------------------------------------------------------------------------------
def flax_params(seed: int = 0) -> dict:
    """A tree of parameters as model.py names them: convolutions, BNs, an fc with a bias."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    def bn(n):
        return {"scale": 1 + normal(n, scale=0.1), "bias": normal(n, scale=0.1)}

    return {
        "conv1": {"kernel": normal(3, 3, 2, 4, scale=0.3)},
        "bn1": bn(4),
        "layer1_0": {"conv1": {"kernel": normal(3, 3, 4, 4, scale=0.3)}, "bn1": bn(4),
                     "downsample_0": {"kernel": normal(1, 1, 4, 4)}, "downsample_1": bn(4)},
        "fc": {"kernel": normal(4, 3), "bias": normal(3)},
    }  # fmt: skip


# each leaf's group, as torchvision's set_weight_decay assigns it (the biases first)
GROUPS = {  # by (a bias group, a norm group)
    (True, True): lambda path: "bias" if path[-1] == "bias" else "norm" if is_bn(path) else "other",
    (False, True): lambda path: "norm" if is_bn(path) else "other",
}


def is_bn(path: tuple[str, ...]) -> bool:
    return path[-2].startswith("bn") or path[-2] == "downsample_1"


def step_both(jax_optimizer, torch_optimizer_of, decays: dict | None, steps: int = 3) -> None:
    """`steps` updates of the same parameters by the same gradients at changing learning rates,
    in optax and in torch (parameter groups of `decays`, by the group of GROUPS), compared."""
    params = flax_params()
    paths, leaves = zip(*[(tuple(k.key for k in path), leaf) for path, leaf in
                          jax.tree_util.tree_flatten_with_path(params)[0]])  # fmt: skip
    tensors = [torch.nn.Parameter(torch.from_numpy(leaf.copy())) for leaf in leaves]
    if decays is None:
        torch_optimizer = torch_optimizer_of([{"params": tensors}])
    else:
        group_of = GROUPS[("bias" in decays, "norm" in decays)]
        groups = [{"params": [t for p, t in zip(paths, tensors) if group_of(p) == name],
                   "weight_decay": decay} for name, decay in decays.items()]  # fmt: skip
        torch_optimizer = torch_optimizer_of(groups)
    state = jax_optimizer.init(params)
    rng = np.random.default_rng(1)
    for lr in [0.01, 0.003, 0.02][:steps]:
        grads = [rng.normal(size=leaf.shape).astype(np.float32) for leaf in leaves]
        for tensor, grad in zip(tensors, grads):
            tensor.grad = torch.from_numpy(grad)
        for group in torch_optimizer.param_groups:
            group["lr"] = lr
        torch_optimizer.step()
        state.hyperparams["learning_rate"] = np.float32(lr)
        tree = jax.tree.unflatten(jax.tree.structure(params), grads)
        updates, state = jax_optimizer.update(tree, state, params)
        params = optax.apply_updates(params, updates)
    for ours, theirs in zip(jax.tree.leaves(params), tensors):
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-6, atol=1e-6)
    moved = [np.abs(np.asarray(o) - s).max() for o, s in zip(jax.tree.leaves(params), leaves)]
    assert min(moved) > 1e-4  # every tensor was updated


def test_parameter_groups_are_torchvisions(packages):
    train = packages(A2_LIKE)["train"]
    params = flax_params()
    groups = train.parameter_groups(params)
    expected = jax.tree_util.tree_map_with_path(
        lambda path, _: GROUPS[True, True](tuple(k.key for k in path)), params
    )
    assert groups == expected
    assert train.GROUP_DECAYS == {"other": 0.02, "norm": 0.0, "bias": 0.0}
    v2_groups = packages(V2_LIKE)["train"].parameter_groups(params)
    assert v2_groups["fc"] == {"kernel": "other", "bias": "other"}  # no bias group
    assert v2_groups["bn1"] == {"scale": "norm", "bias": "norm"}


def test_adamw_with_groups_is_torch_adamw(packages):
    train = packages(ADAMW)["train"]
    step_both(
        train.adamw(),
        lambda groups: torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
        {"other": 0.05, "norm": 0.0, "bias": 0.01},
    )


def test_lamb_with_groups_is_timms_lamb(packages):
    """Clipped gradients (their norm is about 9, the limit 1), no decay and no trust ratio on BN
    and biases."""
    train = packages(A2_LIKE)["train"]
    step_both(
        train.lamb(),
        lambda groups: timm_optim.Lamb(groups, lr=0.005, max_grad_norm=1.0),
        {"other": 0.02, "norm": 0.0, "bias": 0.0},
    )


def test_lamb_without_clipping_or_groups_is_timms_lamb(packages):
    train = packages(LAMB_PLAIN)["train"]
    assert train.MAX_GRAD_NORM == 0 and not hasattr(train, "parameter_groups")
    step_both(
        train.lamb(),
        lambda groups: timm_optim.Lamb(groups, lr=0.01, weight_decay=0.02, max_grad_norm=None),
        None,
    )


def test_sgd_without_decay_on_bn_is_torch_sgd(packages):
    train = packages(V2_LIKE)["train"]
    step_both(
        train.sgd(),
        lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
        {"other": 2e-5, "norm": 0.0},
    )


# --- losses ------------------------------------------------------------------------------------
def logits_and_targets(n: int = 6, classes: int = 10):
    rng = np.random.default_rng(2)
    logits = (3 * rng.normal(size=(n, classes))).astype(np.float32)
    labels = rng.integers(0, classes, n)
    soft = rng.dirichlet(np.full(classes, 0.3), n).astype(np.float32)  # mixed rows
    return logits, labels, soft


def one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def test_label_smoothing_is_torch_cross_entropy(packages):
    criterion = packages(V2_LIKE)["train"].criterion
    logits, labels, soft = logits_and_targets()
    F = torch.nn.functional
    for ours, targets in (
        (one_hot(labels), torch.from_numpy(labels)),
        (soft, torch.from_numpy(soft)),
    ):
        expected = F.cross_entropy(torch.from_numpy(logits), targets, label_smoothing=0.1)
        assert float(criterion(jnp.asarray(logits), jnp.asarray(ours))) == pytest.approx(
            float(expected), rel=1e-6
        )


def test_bce_is_timms_and_the_torch_packages(packages):
    """Labels: timm's BinaryCrossEntropy (smoothing 0.1, threshold 0.2). Mixed rows: timm
    smooths none (it leaves that to its mixup), so without smoothing timm's, with smoothing the
    PyTorch package's criterion (which smooths them as it smooths labels)."""
    logits, labels, soft = logits_and_targets()
    smoothed = packages(A2_LIKE)["train"].criterion
    plain = packages(ADAMW)["train"].criterion
    torch_criterion = packages(A2_LIKE, "torch")["train"].criterion
    x, y = torch.from_numpy(logits), torch.from_numpy(labels)

    def ours(criterion, targets) -> float:
        return float(criterion(jnp.asarray(logits), jnp.asarray(targets)))

    timm_smoothed = timm_loss.BinaryCrossEntropy(smoothing=0.1, target_threshold=0.2)
    timm_plain = timm_loss.BinaryCrossEntropy(smoothing=0.0, target_threshold=0.2)
    only_smoothed = packages(LAMB_PLAIN)["train"].criterion  # no threshold
    cases = [
        (ours(only_smoothed, one_hot(labels)), timm_loss.BinaryCrossEntropy(smoothing=0.1)(x, y)),
        (ours(smoothed, one_hot(labels)), timm_smoothed(x, torch.from_numpy(labels))),
        (ours(smoothed, one_hot(labels)), torch_criterion(x, torch.from_numpy(labels))),
        (ours(plain, soft), timm_plain(x, torch.from_numpy(soft))),
        (ours(smoothed, soft), torch_criterion(x, torch.from_numpy(soft))),
    ]
    for value, expected in cases:
        assert value == pytest.approx(float(expected), rel=1e-6)


# --- mixing ------------------------------------------------------------------------------------
def batch_nchw(n: int = 4, height: int = 6, width: int = 9) -> np.ndarray:
    """Distinct images, taller than wide is not square: a swapped axis shows."""
    return np.random.default_rng(3).normal(size=(n, 3, height, width)).astype(np.float32)


def nhwc(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)


def test_mixup_is_torchvisions(packages, monkeypatch):
    train = packages(V2_LIKE)["train"]
    images, labels = batch_nchw(), np.array([0, 3, 3, 7])
    monkeypatch.setattr(v2.MixUp, "make_params", lambda self, flat: {"lam": 0.3})
    expected_images, expected_targets = v2.MixUp(alpha=0.2, num_classes=10)(
        torch.from_numpy(images), torch.from_numpy(labels)
    )
    mixed, targets = train.mixup(jnp.asarray(nhwc(images)), jnp.asarray(one_hot(labels)), 0.3)
    np.testing.assert_allclose(np.asarray(mixed), nhwc(expected_images), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets), expected_targets.numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("box", [(2, 1, 7, 4), (0, 0, 9, 3), (5, 2, 6, 6), (3, 3, 3, 5)])
def test_cutmix_is_torchvisions(packages, monkeypatch, box):
    """Boxes (x1, y1, x2, y2) of several shapes, at the edges, and empty."""
    train = packages(V2_LIKE)["train"]
    images, labels = batch_nchw(), np.array([1, 2, 5, 9])
    x1, y1, x2, y2 = box
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (9 * 6)  # torchvision's make_params
    monkeypatch.setattr(v2.CutMix, "make_params",
                        lambda self, flat: {"box": box, "lam_adjusted": lam})  # fmt: skip
    expected_images, expected_targets = v2.CutMix(alpha=1.0, num_classes=10)(
        torch.from_numpy(images), torch.from_numpy(labels)
    )
    box_array = tuple(jnp.asarray(v) for v in box)  # traced values, as in the step
    pasted, targets = jax.jit(train.cutmix)(
        jnp.asarray(nhwc(images)), jnp.asarray(one_hot(labels)), box_array
    )
    np.testing.assert_array_equal(np.asarray(pasted), nhwc(expected_images))
    np.testing.assert_allclose(np.asarray(targets), expected_targets.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lam", [0.05, 0.37, 0.8, 0.999])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutmix_boxes_are_drawn_as_torchvision_draws_them(packages, monkeypatch, lam, seed):
    """Given lam and the centre that cutmix_box draws, torchvision's make_params gives its box."""
    train = packages(V2_LIKE)["train"]
    height, width = 6, 9
    key = jax.random.key(seed)
    x_key, y_key = jax.random.split(key)
    centre = {width: int(jax.random.randint(x_key, (), 0, width)),
              height: int(jax.random.randint(y_key, (), 0, height))}  # fmt: skip
    cutmix = v2.CutMix(alpha=1.0, num_classes=10)
    monkeypatch.setattr(cutmix, "_dist", type("Fixed", (), {"sample": lambda self, s: lam})())
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor([centre[high]]))
    params = cutmix.make_params([torch.zeros(4, 3, height, width)])
    ours = train.cutmix_box(key, jnp.float32(lam), height, width)
    assert tuple(int(v) for v in ours) == params["box"]


def test_a_mixed_batch_is_mixup_or_cutmix_both_about_half_the_time(packages):
    train = packages(V2_LIKE)["train"]
    images = jnp.asarray(nhwc(batch_nchw(n=5)))
    targets = jnp.asarray(one_hot(np.arange(5)))
    kinds = []
    for seed in range(24):
        mixed, mixed_targets = jax.jit(train.mix_batch)(images, targets, jax.random.key(seed))
        mixed, mixed_targets = np.asarray(mixed), np.asarray(mixed_targets)
        lam = mixed_targets[0, 0]  # image 0 is lam of itself, 1 - lam of image 4
        np.testing.assert_allclose(mixed_targets.sum(axis=1), 1, rtol=1e-6)
        np.testing.assert_allclose(mixed_targets[0, 4], 1 - lam, atol=1e-6)
        rolled = np.roll(np.asarray(images), 1, axis=0)
        if np.all((mixed == images) | (mixed == rolled)):  # every pixel one image's: cutmix
            kinds.append("cutmix")
            share = np.mean(np.all(mixed == images, axis=-1), axis=(1, 2))
            np.testing.assert_allclose(share, lam, atol=1e-6)
        else:
            kinds.append("mixup")
            np.testing.assert_allclose(mixed, lam * images + (1 - lam) * rolled, atol=1e-5)
    assert 6 <= kinds.count("cutmix") <= 18


# --- the moving average ------------------------------------------------------------------------
def test_the_moving_average_is_averaged_models(packages):
    """A weight sequence averaged every EMA_EVERY = 2 iterations after a warm-up of 3 iterations:
    torch's AveragedModel (reset during the warm-up, as torchvision's references do) and the
    package's average_step and update_average."""
    train = packages(V2_LIKE)["train"]
    assert train.EMA_EVERY == 2
    decay, warmup = 0.9, 3
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )

    def variables() -> dict:
        linear, bn = model[0], model[1]
        state = {k: v.detach().numpy().copy() for k, v in bn.state_dict().items()}
        return {
            "params": {"fc": {"kernel": linear.weight.detach().numpy().T.copy(),
                              "bias": linear.bias.detach().numpy().copy()},
                       "bn": {"scale": state["weight"], "bias": state["bias"]}},
            "batch_stats": {"bn": {"mean": state["running_mean"], "var": state["running_var"]}},
        }  # fmt: skip

    average = jax.tree.map(jnp.asarray, variables())
    rng = np.random.default_rng(4)
    steps = []
    for done in range(1, 12):
        with torch.no_grad():
            for tensor in [*model.parameters(), *model[1].buffers()][:6]:
                tensor.copy_(torch.from_numpy(rng.normal(size=tensor.shape).astype(np.float32)))
        if done % 2 == 0:
            averaged.update_parameters(model)
            if done <= warmup:
                averaged.n_averaged.fill_(0)
            steps.append(train.average_step(done, decay, warmup))
            average = train.update_average(average, variables(), np.float32(steps[-1]))
    assert steps == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.1]
    )  # at 2 and 4, the first after the warm-up
    model.load_state_dict({k.removeprefix("module."): v for k, v in
                           averaged.state_dict().items() if k != "n_averaged"})  # fmt: skip
    for ours, theirs in zip(jax.tree.leaves(average), jax.tree.leaves(variables())):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-6, atol=1e-6)


def test_the_decay_is_adjusted_as_torchvisions_references_adjust_it(packages):
    train = packages(V2_LIKE)["train"]
    # references/classification/train.py: adjust = world_size * batch_size * model_ema_steps /
    # epochs; alpha = min(1.0, (1.0 - model_ema_decay) * adjust); decay = 1 - alpha
    assert train.ema_decay(1024, 600) == pytest.approx(1 - (1 - 0.99) * 1024 * 2 / 600)
    assert train.ema_decay(1024, 0.5) == 0.0


# --- arrays ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_cifar(packages) -> dict:
    path = ROOT / "specs/cifar/resnet20_fast.res"
    return {"jax": packages(path), "torch": packages(path, "torch")}


def test_normalize_dataset_is_the_torch_pipelines(fast_cifar, tmp_path):
    write_cifar10(tmp_path / "c", per_batch=8)
    ours = fast_cifar["jax"]["data"].ArrayData(tmp_path / "c", mesh(), batch_size=8, val_split=4)
    theirs = fast_cifar["torch"]["data"].ArrayData(tmp_path / "c", torch.device("cpu"),
                                                   batch_size=8, val_split=4)  # fmt: skip
    train = np.asarray(ours.train["images"])
    np.testing.assert_allclose(train.transpose(0, 3, 1, 2), theirs.train_images.numpy(), atol=1e-5)
    np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1, atol=1e-4)
    for split in ("val", "test"):
        np.testing.assert_allclose(ours.splits[split][0].transpose(0, 3, 1, 2),
                                   theirs.splits[split][0].numpy(), atol=1e-5)  # fmt: skip


def test_given_normalization_reflect_padding_and_repeats(packages, fast_cifar):
    data = packages(V2_LIKE)["data"]
    np.testing.assert_allclose(data.MEAN.ravel(), [0.4, 0.5, 0.6])
    np.testing.assert_allclose(data.STD.ravel(), [0.2, 0.25, 0.3])
    image = np.arange(16 * 16 * 3, dtype=np.float32).reshape(1, 16, 16, 3)
    draws = {"top": np.array([0]), "left": np.array([3]), "flip": np.array([False])}
    corner = np.asarray(data.augment(jnp.asarray(image), draws))
    reflected = np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(corner, reflected[:, :16, 3:19])
    assert corner[0, 0, 0, 0] == image[0, 2, 1, 0]  # no zeros: the rows and columns reflected
    torch_pad = torch.nn.functional.pad(torch.from_numpy(image).permute(0, 3, 1, 2), (2,) * 4,
                                        mode="reflect")  # fmt: skip
    np.testing.assert_array_equal(reflected, torch_pad.permute(0, 2, 3, 1).numpy())

    order = data.epoch_order(5, 2, 20)  # each image 3 times in a row, 20 positions in all
    permutation = np.random.default_rng([5, 0, 2]).permutation(20)
    assert order.tolist() == permutation.repeat(3)[:20].tolist()
    torch_order = torch.from_numpy(permutation).repeat_interleave(3)[:20]  # the PyTorch package's
    assert order.tolist() == torch_order.tolist()
    assert data.REPEATS == 3


def test_flip_averaging_is_the_torch_packages(fast_cifar):
    """The same weights (through from_torch), the same images: the PyTorch package flips width
    (dim 3 of NCHW), the JAX one width too (axis 2 of NHWC)."""
    torch_package, jax_package = fast_cifar["torch"], fast_cifar["jax"]
    torch.manual_seed(0)
    model = torch_package["model"].build_model().eval()
    with torch.no_grad():
        for bn in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.weight.uniform_(0.5, 1.5)
            bn.running_mean.normal_(0, 0.1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = torch_package["train"].flip_average(model, images).numpy()
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    variables = jax_package["train"].from_torch(state_dict)
    ours = jax_package["train"].flip_average(variables, jnp.asarray(nhwc(images)), amp=False)
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)
    single = jax.nn.softmax(
        jax_package["train"].forward(variables, jnp.asarray(nhwc(images)), False)
    )
    assert np.abs(np.asarray(single) - expected).max() > 1e-4  # the mirror image counts


# --- image folders -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images") / "imagenet"
    write_tree(root)  # 6 training images of each of 3 classes
    return root


def test_folder_batches_hold_the_new_steps(packages, tree):
    """Training batches at random_resized_crop's size (48), evaluation at the network's (64),
    normalized; repeated augmentation: each image twice in a row, augmented apart."""
    data = packages(TINY_V2)["data"]
    folder = data.FolderData(tree, mesh(), batch_size=4, workers=0)
    images, labels = (np.asarray(x) for x in folder.train_batch())
    assert images.shape == (4, 48, 48, 3) and images.dtype == np.float32
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert not np.array_equal(images[0], images[1])  # copies augmented apart
    assert images.min() < -0.5 and images.max() > 1.2  # normalized by ImageNet's statistics
    views, _ = next(folder.eval_batches("test", "single_view"))
    assert np.asarray(views).shape[1:] == (64, 64, 3)
    assert data.RANDOM_ERASING.p == 0.1 and isinstance(data.TRIVIAL_AUGMENT_WIDE, v2.Transform)


# --- what a package holds ----------------------------------------------------------------------
NEW_RECIPES = ["specs/fashion-mnist/resnet20_fast.res", "specs/cifar/resnet20_fast.res",
               "specs/torchvision/resnet50_v2.res", "specs/timm/resnet50_a2.res",
               "specs/timm/resnet50_a3.res", "specs/torchvision/resnet50_bag_of_tricks.res"]  # fmt: skip


# methods that Python or a library calls by name (as in test_torch_model)
CALLED_BY_NAME = {"forward", "find_class", "persistent_load"}


def unused_names(files: dict[str, str]) -> list[str]:
    """Functions, classes and module constants of train.py (and of data.py for arrays) named
    nowhere else in the package (as test_torch_model's check of the goldens)."""
    texts = {name: text for name, text in files.items() if name.endswith(".py")}
    words = collections.Counter(re.findall(r"\w+", "\n".join(texts.values())))
    checked = ["train.py"] + (["data.py"] if "FolderData" not in texts["data.py"] else [])
    unused = []
    for name in checked:
        for node in ast.walk(ast.parse(texts[name])):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign) and node.col_offset == 0:
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            unused += [f"{name}: {d}" for d in defined if words[d] == 1 and d != "main"
                       and not d.startswith("__") and d not in CALLED_BY_NAME]  # fmt: skip
    return unused


@pytest.mark.parametrize("spec_path", NEW_RECIPES)
def test_the_recipes_packages_use_everything_they_define(spec_path):
    files = build_files(*load_spec(spec_path), backend="jax")
    assert unused_names(files) == []
    train = files["train.py"]
    assert "optax.join_schedules" in train or "jnp.interp" in train  # optax's schedules
    if load_spec(spec_path)[0].train.precision == "bf16":
        assert 'args.amp = PRECISION == "bf16" if args.amp is None' in train
    else:
        assert "PRECISION" not in train


def test_only_what_the_spec_uses():
    fast = build_files(*load_spec("specs/fashion-mnist/resnet20_fast.res"), backend="jax")
    for absent in ("mix_batch", "update_average", "EMA_", "GROUP_DECAYS", "sigmoid", "lamb(", "warmup",
                   "single_view", "REPEATS"):  # fmt: skip
        assert absent not in fast["train.py"], absent
    assert "flip_average" in fast["train.py"] and 'mode="reflect"' in fast["data.py"]
    v2_files = build_files(*load_spec("specs/torchvision/resnet50_v2.res"), backend="jax")
    assert "cutmix_box" in v2_files["train.py"] and "update_average" in v2_files["train.py"]
    assert "scale_by_trust_ratio" not in v2_files["train.py"]
