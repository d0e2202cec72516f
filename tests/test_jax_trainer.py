"""The generated JAX trainer: every spec compiles to a lint-clean trainer; optax's SGD against
torch.optim.SGD; the array pipeline against the PyTorch one and its augmentation on known inputs;
the image-folder pipeline against the PyTorch one, batch for batch; runs on real Fashion-MNIST, on
two devices and two processes against one device, killed and resumed, with a NaN loss, on an image
folder; the command line.

Runs are subprocesses on networks small enough to compile in seconds on a CPU, sharing a JAX
compilation cache (a persistent cache holds the same executables a fresh compile would make).
Two devices are forced with XLA_FLAGS, which must be set before JAX starts, so in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import build_files, compile_spec
from resdsl.frontend import load_spec
from resdsl.ir import POLICIES
from tests.helpers import (
    ROOT,
    SPECS,
    jax_checkpoint,
    kill_at_checkpoint,
    last_logged,
    logged,
)
from tests.test_jax_model import imported
from tests.test_torch_folder import FULL, LEAN, TINY, write_tree
from tests.test_torch_trainer import (
    FASHION,
    import_package,
    write_cifar10,
    write_spec,
)

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")

# A network that compiles in seconds, on synthetic 16x16 images, with every array augmentation,
# the mean, dropout (random numbers in the step) and a warm-up.
SYNTHETIC = """
    network small {
        input    3x16x16
        classes  10
        stem     cifar, width 8
        block    basic
        shortcut A
        head     dropout 0.1
        stage: 1 x 8
        stage: 1 x 16, stride 2
    }
    train {
        data       synthetic
        preprocess subtract_mean per_pixel
        augment    pad 2, random_crop 16, hflip
        optimizer  sgd, lr %s, momentum 0.9, weight_decay 1e-4
        batch      16
        schedule   lr * 0.1 at 100, 150
        warmup     lr 0.01 for 5
        length     200 iterations
        eval       single_view
    }
"""
# The same size of network on real Fashion-MNIST, with the paper's CIFAR recipe.
FASHION_SMALL = """
    network small {
        input    1x32x32
        classes  10
        stem     cifar, width 8
        block    basic
        shortcut A
        stage: 1 x 8
        stage: 1 x 16, stride 2
        stage: 1 x 32, stride 2
    }
    train paper_cifar {
        data       fashion_mnist "/usr/share/datasets/fashion-mnist"
        preprocess pad_to 32, subtract_mean per_pixel
    }
"""


def compile_jax(spec_path: str | Path, out: Path) -> Path:
    spec, analysis = load_spec(spec_path)
    compile_spec(spec, analysis, backend="jax", output=out, force=True)
    return out


def compile_torch(spec_path: str | Path, out: Path) -> Path:
    spec, analysis = load_spec(spec_path)
    compile_spec(spec, analysis, backend="torch", output=out, force=True)
    return out


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="module")
def run_jax(jax_cache):
    """Run a package's train.py in a subprocess on `devices` forced host devices."""

    def run(package: Path, *args: str, devices: int = 1, popen: bool = False, **kwargs):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        if devices > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        command = [sys.executable, str(package / "train.py"), "--no-progress", *args]
        if popen:
            return subprocess.Popen(command, env=env, cwd=package.parent, **kwargs)
        return subprocess.run(
            command, env=env, cwd=package.parent, capture_output=True, text=True, **kwargs
        )

    return run


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("synthetic")
    return compile_jax(write_spec(directory, SYNTHETIC % "0.1"), directory / "pkg")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("cifar")
    jax_package = compile_jax(ROOT / "specs/cifar/resnet20.res", directory / "jax")
    torch_package = compile_torch(ROOT / "specs/cifar/resnet20.res", directory / "torch")
    return {"jax": import_package(jax_package), "torch": import_package(torch_package)}


def mesh():
    return jax.sharding.Mesh(np.array(jax.devices()), ("batch",))


def checkpoint(run: Path) -> dict:
    return jax_checkpoint(run / "checkpoint.msgpack")


def leaves(state: dict) -> list[np.ndarray]:
    return jax.tree.leaves(state["variables"]) + list(state["opt_state"])


# --- every spec ---------------------------------------------------------------------------------
def test_every_spec_compiles_a_lint_clean_trainer(tmp_path):
    from ruff.__main__ import find_ruff_bin

    for spec_path in SPECS:
        files = build_files(*load_spec(spec_path), backend="jax")
        assert {"data.py", "train.py"} <= set(files), spec_path
        spec = load_spec(spec_path)[0]
        # torchvision's photo augmentations run in the loader processes, as in the torch package
        photos = any(s.op in POLICIES + ("random_resized_crop", "random_erasing")
                     for s in spec.train.augment)  # fmt: skip
        for name, banned in (("data.py", {"flax"}), ("train.py", set())):  # flax: msgpack
            modules = {m.split(".")[0] for m in imported(files[name])}
            allowed = {"torch", "torchvision"} if photos and name == "data.py" else set()
            assert not modules & ({"torch", "torchvision", "resdsl", *banned} - allowed), (
                spec_path, name, modules)  # fmt: skip
        assert {m.split(".")[0] for m in imported(files["runtime.py"])} <= {
            *sys.stdlib_module_names,
            "tqdm",
        }
        folder = tmp_path / spec_path.replace("/", "_").removesuffix(".res")
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    result = subprocess.run([find_ruff_bin(), "check", "--isolated", "--select", "F,E9",
                             str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_packages_hold_only_what_the_spec_uses(tmp_path):
    fashion = build_files(*load_spec("specs/fashion-mnist/resnet20.res"), backend="jax")
    for name in ("data.py", "train.py"):
        for absent in ("PIL", "multiprocessing", "--workers", "dropout", "WARMUP", "EIGVAL",
                       "multiscale", "all_sum", "NESTEROV"):  # fmt: skip
            assert absent not in fashion[name], (name, absent)
    resnet110 = build_files(*load_spec("specs/cifar/resnet110.res"), backend="jax")["train.py"]
    assert "WARMUP_UNTIL" in resnet110 and "pad_to" not in resnet110
    dropout = build_files(*load_spec("specs/fashion-mnist/resnet20_dropout.res"), backend="jax")
    assert 'rngs={"dropout": dropout_key}' in dropout["train.py"]
    imagenet = build_files(*load_spec("specs/resnet18.res"), backend="jax")
    assert "multiscale_counts" in imagenet["train.py"] and "forkserver" in imagenet["data.py"]
    assert "training_batch" not in imagenet["train.py"]


# --- the optimizer -----------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_optax_sgd_is_torch_sgd(tmp_path, nesterov):
    """The same weights from the same gradients over steps at changing learning rates, to float32
    rounding: PyTorch fuses `param - lr * buffer` into one multiply-add, optax rounds twice."""
    spec = write_spec(tmp_path, SYNTHETIC % ("0.1, nesterov" if nesterov else "0.1"))
    train = import_package(compile_jax(spec, tmp_path / "pkg"))["train"]
    rng = np.random.default_rng(0)
    start = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.01, 0.01, 0.3]

    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    reference = torch.optim.SGD(
        [weight], lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov
    )
    optimizer = train.sgd()
    params = {"w": jax.numpy.asarray(start)}
    state = optimizer.init(params)
    for grad, lr in zip(grads, lrs):
        reference.param_groups[0]["lr"] = lr
        weight.grad = torch.from_numpy(grad)
        reference.step()
        state.hyperparams["learning_rate"] = np.float32(lr)
        updates, state = optimizer.update({"w": jax.numpy.asarray(grad)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(
            np.asarray(params["w"]), weight.detach().numpy(), rtol=0, atol=3e-7
        )
    assert train.NESTEROV if nesterov else not hasattr(train, "NESTEROV")


# --- arrays ------------------------------------------------------------------------------------
def test_array_data_is_the_torch_pipelines(cifar, tmp_path):
    """Reading, scaling, the mean and its cache, the validation split: the same numbers as the
    PyTorch pipeline, channels last."""
    write_cifar10(tmp_path / "c", per_batch=8)
    ours = cifar["jax"]["data"].ArrayData(tmp_path / "c", mesh(), batch_size=8, val_split=4,
                                          mean_cache=tmp_path / "jax" / "mean.npz")  # fmt: skip
    theirs = cifar["torch"]["data"].ArrayData(
        tmp_path / "c", torch.device("cpu"), batch_size=8, val_split=4,
        mean_cache=tmp_path / "torch" / "mean.pt",
    )  # fmt: skip
    with np.load(tmp_path / "jax" / "mean.npz") as saved:
        assert saved["count"] == 36 and saved["mean"].shape == (3, 32, 32)
        np.testing.assert_allclose(
            saved["mean"], torch.load(tmp_path / "torch" / "mean.pt")["mean"].numpy(), atol=1e-7
        )
    np.testing.assert_allclose(np.asarray(ours.train["images"]).transpose(0, 3, 1, 2),
                               theirs.train_images.numpy(), atol=1e-6)  # fmt: skip
    for split in ("val", "test"):
        np.testing.assert_allclose(ours.splits[split][0].transpose(0, 3, 1, 2),
                                   theirs.splits[split][0].numpy(), atol=1e-6)  # fmt: skip
        assert ours.splits[split][1].tolist() == theirs.splits[split][1].tolist()
    assert not hasattr(ours, "iterations_per_epoch")  # a length in iterations has no use for it
    assert list(tmp_path.joinpath("jax").iterdir()) == [tmp_path / "jax" / "mean.npz"]
    with open(tmp_path / "jax" / "mean.npz", "wb") as f:  # the cache is read back
        np.savez(f, mean=np.zeros((3, 32, 32), np.float32), count=36)
    again = cifar["jax"]["data"].ArrayData(tmp_path / "c", mesh(), batch_size=8, val_split=4,
                                           mean_cache=tmp_path / "jax" / "mean.npz")  # fmt: skip
    raw = theirs.train_images.numpy() + torch.load(tmp_path / "torch" / "mean.pt")["mean"].numpy()
    np.testing.assert_allclose(
        np.asarray(again.train["images"]).transpose(0, 3, 1, 2), raw, atol=1e-6
    )


def test_crop_and_flip_on_known_inputs(cifar):
    data = cifar["jax"]["data"]
    image = np.arange(32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3) + 1  # NHWC

    def augment(top, left, flip):
        draws = {"top": np.array([top]), "left": np.array([left]), "flip": np.array([flip])}
        return np.asarray(data.augment(jax.numpy.asarray(image), draws))

    assert np.array_equal(augment(4, 4, False), image)  # the centre crop of the 4-pixel pad
    corner = augment(0, 8, False)
    assert not corner[0, :4].any() and not corner[0, :, 28:].any()
    assert np.array_equal(corner[0, 4:, :28], image[0, :28, 4:])
    assert np.array_equal(augment(4, 4, True), image[:, :, ::-1])


def test_draws_cover_every_offset_and_both_flips(cifar):
    draws = cifar["jax"]["data"].draw_augmentation(jax.random.key(0), 4000)
    assert sorted(np.unique(np.asarray(draws["top"])).tolist()) == list(range(9))
    assert sorted(np.unique(np.asarray(draws["left"])).tolist()) == list(range(9))
    assert 0.45 < float(np.mean(np.asarray(draws["flip"]))) < 0.55
    assert not np.array_equal(np.asarray(draws["top"]), np.asarray(draws["left"]))


def test_the_data_order_is_a_seeded_permutation_per_epoch_and_resumes(cifar, tmp_path):
    write_cifar10(tmp_path / "c", per_batch=8)  # 40 training images: 5 batches of 8
    data = cifar["jax"]["data"]
    d = data.ArrayData(tmp_path / "c", mesh(), batch_size=8, seed=3)
    batches = [np.asarray(d.train_batch()) for _ in range(7)]
    epoch0, epoch1 = data.epoch_order(3, 0, 40), data.epoch_order(3, 1, 40)
    assert np.array_equal(np.concatenate(batches[:5]), epoch0)
    assert np.array_equal(np.concatenate(batches[5:]), epoch1[:16])
    assert d.state_dict() == {"epoch": 1, "position": 16}
    resumed = data.ArrayData(tmp_path / "c", mesh(), batch_size=8, seed=3)
    resumed.load_state_dict({"epoch": 1, "position": 8})
    assert np.array_equal(np.asarray(resumed.train_batch()), batches[6])
    images, labels = data.training_batch(d.train, jax.numpy.asarray(batches[0]), jax.random.key(0))
    assert (
        images.shape == (8, 32, 32, 3)
        and labels.tolist() == np.asarray(d.train["labels"])[batches[0]].tolist()
    )


def test_evaluation_batches_are_filled_up_with_uncounted_images(cifar, tmp_path):
    write_cifar10(tmp_path / "c", per_batch=7)
    data, train = cifar["jax"]["data"], cifar["jax"]["train"]
    d = data.ArrayData(tmp_path / "c", mesh(), batch_size=8)
    batches = list(d.eval_batches("test", 4))
    assert [x.shape for x, _ in batches] == [(4, 32, 32, 3), (4, 32, 32, 3)]
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    assert labels[:7].tolist() == d.splits["test"][1].tolist() and labels[7] == -1
    scores = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    scores[1, 5] = 0.5  # label 5: second, so a top-1 error but no top-5 error
    counts = train.error_counts(jax.numpy.asarray(scores), jax.numpy.asarray([1, 5, 3, -1]))
    assert np.asarray(counts).tolist() == [3.0, 1.0, 0.0]  # 3 images, one top-1 error, no top-5


# --- schedules (the PyTorch trainer's class, rendered again) ----------------------------------
def test_milestones_and_the_warm_up_rule(cifar, tmp_path):
    schedule = cifar["jax"]["train"].Schedule(total=640, spec_total=64000)
    assert schedule.milestones == [320, 480]
    assert [schedule.lr(i) for i in (0, 319, 320, 480)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    train = import_package(compile_jax(ROOT / "specs/cifar/resnet110.res", tmp_path / "p"))["train"]
    schedule = train.Schedule(total=64000, spec_total=64000)
    schedule.observe([0.9] * 100)
    assert schedule.lr(100) == 0.01
    schedule.observe([0.7] * 60)  # the last 100: 40 at 0.9, 60 at 0.7 -> 0.78 < 0.80
    assert schedule.lr(160) == 0.1


# --- image folders ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """The JAX and PyTorch packages of a tiny image-folder spec with every protocol and step."""
    directory = tmp_path_factory.mktemp("folder")
    spec = write_spec(directory, TINY % FULL)
    return {
        "jax": compile_jax(spec, directory / "jax"),
        "torch": compile_torch(spec, directory / "torch"),
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images") / "imagenet"
    write_tree(root)
    return root


def nchw(views) -> np.ndarray:
    return np.moveaxis(np.asarray(views), -1, -3)


def test_folder_batches_are_the_torch_pipelines(folder, tree):
    """The same files, order, augmentation, mean and views as the PyTorch pipeline, channels
    last: the two backends render the same NumPy and PIL functions."""
    ours = import_package(folder["jax"])["data"].FolderData(
        tree, mesh(), batch_size=4, workers=0, seed=5
    )
    theirs = import_package(folder["torch"])["data"].FolderData(
        tree, torch.device("cpu"), batch_size=4, workers=0, seed=5
    )
    np.testing.assert_allclose(ours.mean, theirs.mean, atol=1e-7)
    for _ in range(6):  # crosses an epoch (18 images, 4 batches)
        (images, labels), (their_images, their_labels) = ours.train_batch(), theirs.train_batch()
        assert np.array_equal(nchw(images), their_images.numpy())
        assert np.asarray(labels).tolist() == their_labels.tolist()
    assert ours.state_dict() == theirs.state_dict()
    for protocol in ("single_view", "ten_crop"):
        batches = list(ours.eval_batches("test", protocol, limit=5))
        labels = np.concatenate([np.asarray(y) for _, y in batches])
        views = np.concatenate([nchw(v) for v, _ in batches])[labels >= 0]
        their = list(theirs.eval_batches("test", protocol, limit=5))
        assert labels[labels >= 0].tolist() == torch.cat([y for _, y in their]).tolist()
        assert np.array_equal(views, torch.cat([v for v, _ in their]).numpy()), protocol
    for (views, label), (their_views, their_label) in zip(
        ours.eval_batches("test", "multiscale"),
        theirs.eval_batches("test", "multiscale"),
        strict=True,
    ):
        assert label.tolist() == their_label.tolist()
        assert all(
            np.array_equal(nchw(v), t.numpy()) for v, t in zip(views, their_views, strict=True)
        )


def test_an_epoch_is_the_torch_trainers(tmp_path):
    """A length in epochs: whole global batches of the training split, the rest left out."""
    spec = ROOT / "specs/cifar/resnet110_stochastic_depth.res"
    ours = import_package(compile_jax(spec, tmp_path / "jax"))["data"]
    theirs = import_package(compile_torch(spec, tmp_path / "torch"))["data"]
    write_cifar10(tmp_path / "c", per_batch=8)  # 40 training images
    for batch_size, val_split in ((8, 4), (16, 0)):
        a = ours.ArrayData(tmp_path / "c", mesh(), batch_size=batch_size, val_split=val_split)
        b = theirs.ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=batch_size,
                             val_split=val_split)  # fmt: skip
        assert a.iterations_per_epoch == b.iterations_per_epoch == (40 - val_split) // batch_size


def test_the_per_channel_mean_is_the_torch_pipelines(tree, tmp_path):
    spec = write_spec(tmp_path, TINY % LEAN)
    ours = import_package(compile_jax(spec, tmp_path / "jax"))["data"]
    theirs = import_package(compile_torch(spec, tmp_path / "torch"))["data"]
    cache = tmp_path / "run" / "mean.npz"
    mean = ours.FolderData(tree, mesh(), batch_size=4, workers=0, mean_cache=cache).mean
    their_mean = theirs.FolderData(tree, torch.device("cpu"), batch_size=4, workers=0).mean
    assert mean.shape == (3, 1, 1)
    np.testing.assert_allclose(mean, their_mean, atol=1e-7)
    assert [p.name for p in cache.parent.iterdir()] == ["mean.npz"]  # no temporary file left
    with np.load(cache) as saved:
        assert saved["count"] == 18 and np.array_equal(saved["mean"], mean)


def test_a_restored_state_continues_the_folder_order(folder, tree):
    data = import_package(folder["jax"])["data"]
    d = data.FolderData(tree, mesh(), batch_size=4, workers=0, seed=2)
    for _ in range(3):
        d.train_batch()
    state = d.state_dict()
    expected = [d.train_batch() for _ in range(4)]
    resumed = data.FolderData(tree, mesh(), batch_size=4, workers=0, seed=2)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, [resumed.train_batch() for _ in range(4)]):
        assert np.array_equal(np.asarray(x), np.asarray(rx)) and np.array_equal(
            np.asarray(y), np.asarray(ry)
        )


@pytest.mark.long
def test_loader_processes_give_the_batches_of_one_process(folder, tree):
    # "forkserver" loaders import the package: in a fresh process with the package on its path
    script = f"""
import sys
import jax
import numpy as np
sys.path.insert(0, {str(folder["jax"])!r})
import data

def batches(workers):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    d = data.FolderData({str(tree)!r}, mesh, batch_size=4, workers=workers, seed=5)
    train = [d.train_batch() for _ in range(6)]
    evaluated = [list(d.eval_batches("test", p)) for p in ("single_view", "ten_crop", "multiscale")]
    return jax.tree.map(np.asarray, (d.mean, train, evaluated))

in_process, loaders = jax.tree.leaves(batches(0)), jax.tree.leaves(batches(2))
assert all(np.array_equal(a, b) for a, b in zip(in_process, loaders, strict=True))
print("same batches")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "same batches"


@pytest.mark.long
def test_a_tiny_image_folder_run_reports_every_protocol(run_jax, folder, tree, tmp_path):
    run = tmp_path / "run"
    result = run_jax(folder["jax"], "--data", str(tree), "--out", str(run), "--iterations", "4",
                     "--batch-size", "4", "--workers", "2", "--log-every", "2",
                     "--eval-images", "2", "--amp")  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["iterations"] == 4 and set(final["results"]) == {"test"}
    assert list(final["results"]["test"]) == ["single_view", "ten_crop", "multiscale"]
    assert final["test_top1_error"] == final["results"]["test"]["single_view"]["top1_error"]
    assert all(0 <= r["top1_error"] <= 1 for r in final["results"]["test"].values())
    validations = [r for r in logged(run) if "split" in r and r["iteration"] < 4]
    assert validations == [
        {
            "iteration": 2,
            "split": "test",
            "protocol": "single_view",
            "top1_error": validations[0]["top1_error"],
        }
    ]  # every 4 of 8: 2 of 4
    with np.load(run / "mean.npz") as saved:
        assert saved["mean"].shape == (3, 64, 64)
    assert checkpoint(run)["data"] == {"epoch": 1, "position": 0}  # 16 of 18 images: a new epoch


def test_an_undecodable_image_stops_the_run_with_its_name(run_jax, folder, tmp_path):
    root = tmp_path / "imagenet"
    write_tree(root, train=2, val=1)
    (root / "train" / "b_dog" / "7.png").write_bytes(b"\x89PNG truncated")
    result = run_jax(folder["jax"], "--data", str(root), "--out", str(tmp_path / "run"),
                     "--iterations", "2", "--workers", "2")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"error: cannot decode {root / 'train' / 'b_dog' / '7.png'}: "
        + (result.stderr.strip().split(": ", 2)[2])
    )


# --- runs --------------------------------------------------------------------------------------
@pytest.mark.long
@pytest.mark.slow
def test_a_short_run_on_real_fashion_mnist_is_far_above_chance(run_jax, tmp_path):
    assert (FASHION / "train-images-idx3-ubyte.gz").exists(), (
        "apt-get install dataset-fashion-mnist"
    )
    package = compile_jax(write_spec(tmp_path, FASHION_SMALL), tmp_path / "pkg")
    run = tmp_path / "run"
    result = run_jax(package, "--out", str(run), "--iterations", "300", "--batch-size", "64",
                     "--eval-images", "2000", "--log-every", "100", "--eval-every", "100")  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["iterations"] == 300 and final["test_top1_error"] < 0.4  # chance is 0.90
    assert set(final) == {"spec", "recipe", "backend", "iterations", "test_top1_error",
                          "test_top5_error", "wall_s", "train_s", "images_per_s", "results"}  # fmt: skip
    assert (final["recipe"], final["backend"]) == ("paper_cifar", "jax")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "train_loss" in r]
    assert [r["iteration"] for r in logs] == [100, 200, 300]
    assert set(logs[0]) == {"iteration", "lr", "train_loss", "train_error", "images_per_s"}
    assert logs[-1]["lr"] == pytest.approx(0.001)  # both milestones, scaled to 150 and 225
    assert records[-1] == {"iteration": 300, "split": "test", "protocol": "single_view",
                           "top1_error": final["test_top1_error"],
                           "top5_error": final["test_top5_error"]}  # fmt: skip
    curve = [(r["iteration"], r["split"]) for r in records if "top1_error" in r]
    assert curve == [(100, "test"), (200, "test"), (300, "test")]  # --eval-every, then the end
    assert records[1]["iteration"] == 100 and "top1_error" in records[1]  # after its log line
    state = checkpoint(run)
    assert state["iteration"] == 300 and state["data"] == {"epoch": 0, "position": 19200}
    assert set(state) >= {"variables", "opt_state", "schedule", "data", "clock", "log_window"}
    with np.load(run / "mean.npz") as saved:
        assert saved["mean"].shape == (1, 32, 32) and saved["count"] == 60000
    evaluated = run_jax(package, "--eval-only", "--checkpoint", str(run / "checkpoint.msgpack"),
                        "--out", str(run), "--eval-images", "2000")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert (
        json.loads(evaluated.stdout)["test"]["single_view"]
        == final["results"]["test"]["single_view"]
    )


@pytest.mark.long
@pytest.mark.slow
def test_two_devices_and_two_processes_train_as_one(run_jax, synthetic, tmp_path):
    """The same global batch, data, augmentation and dropout, BN over the global batch: a run on
    two devices ends with the weights of a run on one, to float rounding, and a run of two
    processes (jax.distributed, one device each) with those of the two devices, bitwise."""
    common = ["--iterations", "3", "--batch-size", "16", "--eval-images", "200", "--log-every", "1"]
    for devices in (1, 2):
        result = run_jax(
            synthetic, "--out", str(tmp_path / f"d{devices}"), *common, devices=devices
        )
        assert result.returncode == 0, result.stderr
    for attempt in range(3):  # another program may take the free port before the coordinator
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        run = tmp_path / f"p2_{attempt}"
        processes = [
            run_jax(synthetic, "--out", str(run), *common, "--coordinator",
                    f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), popen=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in (0, 1)
        ]  # fmt: skip
        errors = [process.communicate(timeout=600)[1] for process in processes]
        if all(process.returncode == 0 for process in processes):
            break
        assert any("Address already in use" in e for e in errors), errors[0][-3000:]
    else:
        raise AssertionError("three ports were taken before the coordinator could bind them")
    (tmp_path / "p2").symlink_to(run)
    one, two, multi = (checkpoint(tmp_path / d) for d in ("d1", "d2", "p2"))
    for a, b, c in zip(leaves(one), leaves(two), leaves(multi), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert np.array_equal(b, c)
    losses = [
        [r["train_loss"] for r in logged(tmp_path / d) if "train_loss" in r] for d in ("d1", "d2")
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert logged(tmp_path / "d2") == logged(tmp_path / "p2")
    data = import_package(synthetic)["data"]  # the check the trainer makes with 2 devices
    with pytest.raises(data.DataError, match="^the batch of 15 does not split over 2 devices$"):
        data.check_batch(15, 2, "devices", 10_000)


@pytest.mark.long
@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights_bitwise(run_jax, synthetic, tmp_path):
    common = [
        "--iterations",
        "60",
        "--checkpoint-every",
        "5",
        "--eval-images",
        "100",
        "--log-every",
        "1",
    ]
    assert run_jax(synthetic, "--out", str(tmp_path / "a"), *common).returncode == 0
    run = tmp_path / "b"
    process = run_jax(synthetic, "--out", str(run), *common, popen=True,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    killed_at = kill_at_checkpoint(process, lambda: checkpoint(run)["iteration"], 10, timeout=300)
    assert killed_at < 60, "the run ended before it could be killed"
    with open(run / "metrics.jsonl", "a") as f:  # as if killed in the middle of a line
        f.write('{"iteration": 2')
    resumed = run_jax(synthetic, "--out", str(run), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoint.msgpack'} at iteration {killed_at}" in resumed.stdout
    a, b = checkpoint(tmp_path / "a"), checkpoint(run)
    assert a["data"] == b["data"] and a["schedule"] == b["schedule"]
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))  # bitwise
    assert logged(tmp_path / "a") == logged(run)


def test_a_new_run_never_overwrites_an_earlier_one(run_jax, synthetic, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoint.msgpack").write_bytes(b"an earlier run's")
    (run / "final.json").write_text("{}")
    result = run_jax(synthetic, "--out", str(run), "--iterations", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds an earlier run (checkpoint.msgpack, final.json); go on with it (--resume)" in (
        result.stderr
    )
    assert (run / "checkpoint.msgpack").read_bytes() == b"an earlier run's"


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(run_jax, tmp_path):
    package = compile_jax(write_spec(tmp_path, SYNTHETIC % "1e12"), tmp_path / "pkg")
    run = tmp_path / "run"
    result = run_jax(package, "--out", str(run), "--iterations", "30", "--checkpoint-every", "1",
                     "--log-every", "1")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stopping (the last good checkpoint is" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    state = checkpoint(run)
    assert state["iteration"] < 30
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["variables"]))


def test_missing_data_is_one_line(run_jax, tmp_path):
    package = compile_jax(ROOT / "specs/fashion-mnist/resnet20.res", tmp_path / "pkg")
    result = run_jax(package, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'none'} has no train-images-idx3-ubyte[.gz]; Fashion-MNIST is read "
        "from the IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
    )


def test_help_lists_the_flags(run_jax, synthetic):
    result = run_jax(synthetic, "--help")
    assert result.returncode == 0
    for flag in ("--data", "--out", "--iterations", "--batch-size", "--device", "--seed",
                 "--checkpoint-every", "--resume", "--eval-only", "--checkpoint", "--val-split",
                 "--eval-images", "--log-every", "--amp", "--no-amp", "--compile", "--no-compile",
                 "--progress", "--no-progress", "--coordinator", "--num-processes", "--process-id",
                 "--distributed"):  # fmt: skip
        assert flag in result.stdout, flag
    assert "--workers" not in result.stdout


@pytest.mark.long
def test_bad_checkpoints_are_refused_by_name_and_left_in_place(synthetic, tmp_path):
    from flax import serialization

    train = import_package(synthetic)["train"]
    variables = jax.tree.map(np.asarray, train.init_variables(0))
    good = tmp_path / "good.msgpack"
    sealed = train.runtime.seal({"variables": variables}, train.SPEC, train.array_bytes)
    good.write_bytes(serialization.msgpack_serialize(sealed))
    saved = train.load_checkpoint(good)
    same = jax.tree.map(np.array_equal, train.checked_variables(saved, good), variables)
    assert all(jax.tree.leaves(same))
    flipped = bytearray(good.read_bytes())
    flipped[-100] ^= 0x01
    (tmp_path / "flipped.msgpack").write_bytes(flipped)
    (tmp_path / "old.pkl").write_bytes(b"\x80\x05}q\x00.")  # a pickle, as earlier trainers wrote
    other = train.runtime.seal({"variables": variables}, "a.res", train.array_bytes)
    (tmp_path / "other.msgpack").write_bytes(serialization.msgpack_serialize(other))
    (tmp_path / "plain.msgpack").write_bytes(serialization.msgpack_serialize(variables))
    (tmp_path / "torch.pt").write_bytes(b"PK\x03\x04" + bytes(100))
    cases = {
        "flipped.msgpack": "is damaged or cut short",
        "old.pkl": "is not a checkpoint written by a resdsl trainer",
        "other.msgpack": f"is a checkpoint of a.res, not of {train.SPEC}",
        "plain.msgpack": "is not a checkpoint of a resdsl trainer (it has no `resdsl` entry)",
        "torch.pt": "is a PyTorch trainer's checkpoint (torch.save); this JAX trainer reads",
        "missing.msgpack": "does not exist",
    }
    for name, message in cases.items():
        path = tmp_path / name
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(
            train.runtime.RunError, match=f"^{re.escape(str(path))} .*{re.escape(message)}"
        ):
            train.load_checkpoint(path)
        assert (path.read_bytes() if path.exists() else None) == before
    smaller = {"variables": {"params": {"fc": {"bias": np.zeros(3, np.float32)}}}}
    with pytest.raises(train.runtime.RunError, match="does not hold the variables of this network"):
        train.checked_variables(smaller, good)


def test_flags_out_of_range_are_one_line_usage_errors(run_jax, synthetic, tmp_path):
    result = run_jax(synthetic, "--out", str(tmp_path / "run"), "--batch-size", "-4")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr == (
        "error: argument --batch-size: must be a positive integer, not -4 (see train.py --help)\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--coordinator", "localhost:1234"], "--coordinator needs --num-processes N and --process-id I"),
     (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
      "--coordinator takes HOST:PORT (a port 1-65535), not 'localhost'"),
     (["--coordinator", "h:65536", "--num-processes", "2", "--process-id", "0"],
      "--coordinator takes HOST:PORT (a port 1-65535), not 'h:65536'"),
     (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"],
      "--process-id 2: the processes are numbered 0 to 1"),
     (["--num-processes", "2"], "--num-processes and --process-id go with --coordinator HOST:PORT")],
)  # fmt: skip
def test_several_processes_need_consistent_flags(synthetic, flags, message, capsys):
    train = import_package(synthetic)["train"]
    with pytest.raises(SystemExit) as stop:
        train.parse_args(flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err  # (see PROG --help): the program is pytest's here
    assert err.startswith(f"error: {message} (see ") and err.count("\n") == 1, err


def test_a_coordinator_port_in_use_is_one_line(run_jax, synthetic, tmp_path):
    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_jax(synthetic, "--out", str(tmp_path / "run"), "--coordinator",
                         f"localhost:{port}", "--num-processes", "2", "--process-id", "0")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: --coordinator localhost:{port}: Address already in use\n"


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return f"localhost:{s.getsockname()[1]}"


def meet_all(train, *processes: tuple) -> dict:
    """train.meet(address, count, index, timeout_s) of each process, in threads, process 0
    first: "ok" or the RunError's text, by index."""
    said = {}

    def meet(address, count, index, timeout_s):
        try:
            train.meet(address, count, index, timeout_s)
            said[index] = "ok"
        except train.runtime.RunError as error:
            said[index] = str(error)

    threads = [threading.Thread(target=meet, args=p) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return said


def test_processes_meet_before_jax_distributed_starts(synthetic):
    train = import_package(synthetic)["train"]
    a = free_address()
    assert meet_all(train, (a, 3, 0, 60), (a, 3, 2, 60), (a, 3, 1, 60)) == {
        0: "ok",
        1: "ok",
        2: "ok",
    }
    a = free_address()
    wrong = "process 1 has --num-processes 3, not 2"
    assert meet_all(train, (a, 2, 0, 60), (a, 3, 1, 60)) == {
        0: wrong,
        1: f"process 0 at {a}: {wrong}",
    }
    a = free_address()
    missing = (f"process 2 of 3 did not come to {a} in 2 s; start each with --coordinator {a} "
               "--num-processes 3 --process-id I")  # fmt: skip
    assert meet_all(train, (a, 3, 0, 2), (a, 3, 1, 60)) == {
        0: missing,
        1: f"process 0 at {a}: {missing}",
    }
    a = free_address()
    assert meet_all(train, (a, 2, 1, 2)) == {
        1: f"nothing answered at --coordinator {a} in 2 s; start process 0 there"
    }


def test_a_stranger_at_the_coordinator_port_is_ignored(synthetic):
    train = import_package(synthetic)["train"]
    a = free_address()
    host, port = a.split(":")
    coordinator = threading.Thread(target=train.meet, args=(a, 2, 0, 60))
    coordinator.start()
    for _ in range(600):  # until process 0 listens
        try:
            stranger = socket.create_connection((host, int(port)))
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    with stranger:
        stranger.sendall(b"GET / HTTP/1.0\r\n\r\n")
        stranger.shutdown(socket.SHUT_WR)
        assert stranger.recv(100) == b""  # closed without an answer
    train.meet(a, 2, 1, 60)  # the process itself is taken
    coordinator.join()


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_says_how_to_go_on(
    run_jax, synthetic, tmp_path
):
    import signal
    import time

    run = tmp_path / "run"
    args = ["--out", str(run), "--iterations", "1000000", "--log-every", "1"]
    process = run_jax(synthetic, *args, popen=True, text=True,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while last_logged(run) < 3:
        assert time.time() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    stopped = checkpoint(run)["iteration"]
    command = [sys.executable, str(synthetic / "train.py"), "--no-progress", *args, "--resume"]
    assert stderr == f"stopped at iteration {stopped}; go on with: {shlex.join(command)}\n"
    assert logged(run)[-1]["iteration"] <= stopped
