"""The generated PyTorch trainer: data formats, augmentation, schedules, a real run on
Fashion-MNIST, kill-and-resume, two-process DDP, NaN handling, and the command line."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import load_spec
from tests.helpers import ROOT, kill_at_checkpoint, last_logged, logged, runtime, torch_checkpoint

torch = pytest.importorskip("torch")

FASHION = Path("/usr/share/datasets/fashion-mnist")


def compile_to(spec_path: str | Path, out: Path) -> Path:
    spec, analysis = load_spec(spec_path)
    compile_spec(spec, analysis, backend="torch", output=out, force=True)
    return out


def import_package(directory: Path) -> dict:
    """The generated data, model and train modules, imported as train.py imports them."""
    names = ("data", "model", "train", "runtime")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(directory))
    try:
        import data
        import model
        import train

        return {"data": data, "model": model, "train": train}
    finally:
        sys.path.remove(str(directory))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def run_train(package: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(package / "train.py"), "--no-progress", *args],
        capture_output=True, text=True, cwd=package.parent, **kwargs,
    )  # fmt: skip


def write_spec(tmp_path: Path, text: str, name: str = "net.res") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    return compile_to(
        ROOT / "specs/fashion-mnist/resnet20.res", tmp_path_factory.mktemp("f") / "pkg"
    )


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> dict:
    return import_package(
        compile_to(ROOT / "specs/cifar/resnet20.res", tmp_path_factory.mktemp("c") / "pkg")
    )


# --- files in their real on-disk formats -------------------------------------------------------
def write_cifar10(root: Path, per_batch: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    all_images, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(root / name, "wb") as f:  # the python version's layout: a pickled dict
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)  # fmt: skip
        all_images.append(data)
        all_labels.append(labels)
    return np.concatenate(all_images), np.concatenate(all_labels)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, n: int = 20, compress: bool = True) -> np.ndarray:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return images


def test_cifar10_pickles(cifar, tmp_path):
    images, labels = write_cifar10(tmp_path / "cifar-10-batches-py")
    arrays = cifar["data"].load_arrays(tmp_path / "cifar-10-batches-py")
    train_images, train_labels = arrays["train"]
    assert train_images.shape == (30, 3, 32, 32) and train_images.dtype == np.uint8
    assert np.array_equal(train_images.reshape(30, -1), images[:30])
    assert train_labels.tolist() == labels[:30].tolist()
    assert arrays["test"][0].shape == (6, 3, 32, 32)


def write_cifar100(root: Path, train: int = 8, test: int = 4) -> None:
    """CIFAR-100's python version: `train` and `test` pickles with fine and coarse labels."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": np.full((n, 3072), 7, np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)],
                         b"coarse_labels": [0] * n}, f)  # fmt: skip


def test_cifar100_pickles(tmp_path):
    package = compile_to(ROOT / "specs/variants/wrn_28_10.res", tmp_path / "pkg")
    data = import_package(package)["data"]
    root = tmp_path / "cifar-100-python"
    write_cifar100(root)
    arrays = data.load_arrays(root)
    assert arrays["train"][0].shape == (8, 3, 32, 32) and arrays["train"][1].tolist() == list(
        range(8)
    )
    assert data.CLASSES == 100


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files_gzipped_or_not(tmp_path, compress):
    spec = write_spec(tmp_path, """
        network m extends "%s" {
            input 1x28x28
        }
        train paper_cifar {
            data    mnist
            augment pad 2, random_crop 28
        }
    """ % (ROOT / "specs/cifar/resnet20.res"))  # fmt: skip
    data = import_package(compile_to(spec, tmp_path / "pkg"))["data"]
    images = write_mnist(tmp_path / "mnist", compress=compress)
    arrays = data.load_arrays(tmp_path / "mnist")
    assert arrays["train"][0].shape == (20, 1, 28, 28)
    assert np.array_equal(arrays["train"][0][:, 0], images)
    assert arrays["test"][1].tolist() == [i % 10 for i in range(20)]


def test_missing_or_malformed_data_is_a_clear_error(cifar, tmp_path):
    DataError = cifar["data"].DataError
    with pytest.raises(DataError, match="has no data_batch_1.*python version of CIFAR-10"):
        cifar["data"].load_arrays(tmp_path / "nowhere")
    root = tmp_path / "broken"
    write_cifar10(root)
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a batch"):
        cifar["data"].load_arrays(root)
    write_cifar10(root)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, -1]}, f)
    with pytest.raises(
        DataError, match="test_batch holds a label -1 \\(at 1\\); the network has 10"
    ):
        cifar["data"].load_arrays(root)


def test_malformed_idx_is_a_clear_error(fashion, tmp_path):
    data = import_package(fashion)["data"]
    root = tmp_path / "fm"
    write_mnist(root, compress=False)
    (root / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12 + b"xx")
    with pytest.raises(data.DataError, match="holds 2 bytes of data"):
        data.load_arrays(root)
    (root / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04")
    with pytest.raises(data.DataError, match="bad magic number"):
        data.load_arrays(root)
    (root / "train-images-idx3-ubyte").unlink()
    with pytest.raises(data.DataError, match="has no train-images-idx3-ubyte"):
        data.load_arrays(root)


def test_the_trainer_reports_missing_data_without_a_traceback(fashion, tmp_path):
    result = run_train(fashion, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: {tmp_path / 'none'} has no train-images-idx3-ubyte" in result.stderr


# --- preprocessing and augmentation on known inputs ---------------------------------------------
def test_pad_to_centres_28_in_32(fashion):
    data = import_package(fashion)["data"]
    images = np.full((1, 1, 28, 28), 255, np.uint8)
    x = data.to_float(images)
    assert x.shape == (1, 1, 32, 32)
    assert x[0, 0, 2:30, 2:30].eq(1).all() and x.sum() == 28 * 28
    assert x[0, 0, :2].abs().sum() == 0 and x[0, 0, :, 30:].abs().sum() == 0


def test_per_pixel_mean_is_computed_once_and_cached(cifar, tmp_path):
    write_cifar10(tmp_path / "c")
    cache = tmp_path / "run" / "mean.pt"
    d = cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=6, mean_cache=cache)
    raw = torch.from_numpy(cifar["data"].load_arrays(tmp_path / "c")["train"][0]).float() / 255
    mean = torch.load(cache)["mean"]
    assert mean.shape == (3, 32, 32)
    assert torch.allclose(mean, raw.mean(0), atol=1e-6)
    assert torch.allclose(d.train_images.mean(0), torch.zeros(3, 32, 32), atol=1e-5)
    test_images, _ = d.splits["test"]
    raw_test = torch.from_numpy(cifar["data"].load_arrays(tmp_path / "c")["test"][0]).float() / 255
    assert torch.allclose(test_images, raw_test - mean, atol=1e-6)  # the training mean, on test
    torch.save({"mean": torch.zeros(3, 32, 32), "count": 30}, cache)  # the cache is read back
    d2 = cifar["data"].ArrayData(
        tmp_path / "c", torch.device("cpu"), batch_size=6, mean_cache=cache
    )
    assert torch.allclose(d2.train_images, raw, atol=1e-6)


def test_a_damaged_mean_cache_is_computed_again_and_an_unwritable_one_is_a_data_error(
    cifar, tmp_path
):
    write_cifar10(tmp_path / "c")
    cache = tmp_path / "run" / "mean.pt"
    cache.parent.mkdir()
    cache.write_bytes(b"cut short")
    d = cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=6, mean_cache=cache)
    assert torch.load(cache)["count"] == 30 and d.train_images.shape == (30, 3, 32, 32)
    assert [p.name for p in cache.parent.iterdir()] == ["mean.pt"]  # no temporary file left
    blocked = tmp_path / "file" / "mean.pt"
    blocked.parent.write_text("a file where the run directory should be")
    with pytest.raises(cifar["data"].DataError, match=f"^cannot write {blocked}: "):
        cifar["data"].ArrayData(
            tmp_path / "c", torch.device("cpu"), batch_size=6, mean_cache=blocked
        )


def test_crop_and_flip_on_known_inputs(cifar):
    data = cifar["data"]
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32) + 1
    keep = data.augment(image, {"top": torch.tensor([4]), "left": torch.tensor([4]),
                                "flip": torch.tensor([False])})  # fmt: skip
    assert torch.equal(keep, image)  # the centre crop of the 4-pixel pad is the image
    corner = data.augment(image, {"top": torch.tensor([0]), "left": torch.tensor([8]),
                                  "flip": torch.tensor([False])})  # fmt: skip
    assert corner[0, :, :4].abs().sum() == 0 and corner[0, :, :, 28:].abs().sum() == 0
    assert torch.equal(corner[0, :, 4:, :28], image[0, :, :28, 4:])
    flipped = data.augment(image, {"top": torch.tensor([4]), "left": torch.tensor([4]),
                                   "flip": torch.tensor([True])})  # fmt: skip
    assert torch.equal(flipped, image.flip(3))


def test_draws_cover_every_offset_and_both_flips(cifar):
    draws = cifar["data"].draw_augmentation(4000, torch.Generator().manual_seed(0))
    assert sorted(draws["top"].unique().tolist()) == list(range(9))
    assert 0.45 < draws["flip"].float().mean() < 0.55


def test_processes_share_the_global_batch(cifar, tmp_path):
    write_cifar10(tmp_path / "c", per_batch=8)

    def batches(rank, world):
        d = cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=8,
                                    rank=rank, world=world, seed=3)  # fmt: skip
        return [d.train_batch() for _ in range(7)]  # crosses an epoch (40 images, 5 batches)

    whole = batches(0, 1)
    halves = [batches(0, 2), batches(1, 2)]
    for i, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), images)
        assert torch.equal(torch.cat([halves[0][i][1], halves[1][i][1]]), labels)


def test_a_batch_is_chosen_on_the_host_and_built_from_device_tensors(cifar, tmp_path):
    """The split a CUDA graph relies on: random choices on the host (copied into the graph's
    inputs), then tensor operations only; together they are exactly `train_batch`."""
    write_cifar10(tmp_path / "c", per_batch=8)
    a, b = (cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=8, seed=5)
            for _ in range(2))  # fmt: skip
    for _ in range(7):  # crosses an epoch
        draws = b.next_draws()
        assert set(draws) == {"index", "top", "left", "flip"}
        assert all(v.device.type == "cpu" and len(v) == 8 for v in draws.values())
        static = {k: torch.empty_like(v) for k, v in draws.items()}  # a graph's input buffers
        for k, v in draws.items():
            static[k].copy_(v)
        expected_images, expected_labels = a.train_batch()
        images, labels = b.batch(static)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_a_new_run_never_overwrites_an_earlier_one(fashion, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 5, "lr": 0.1}\n{"iteration": 1')
    result = run_train(fashion, "--out", str(run), "--iterations", "2", "--batch-size", "8",
                       "--eval-images", "10")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {run} holds an earlier run (metrics.jsonl); go on with it (--resume)" in (
        result.stderr
    )
    assert (run / "metrics.jsonl").read_text() == '{"iteration": 5, "lr": 0.1}\n{"iteration": 1'
    # --resume without a checkpoint: stopped before its first one, the run starts again
    result = run_train(fashion, "--out", str(run), "--iterations", "2", "--batch-size", "8",
                       "--eval-images", "10", "--log-every", "1", "--resume")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["iteration"] for r in logged(run)] == [1, 2, 2]  # two log lines, one evaluation


def test_cuda_graph_needs_a_cuda_device(fashion, tmp_path):
    result = run_train(fashion, "--device", "cpu", "--cuda-graph", "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--cuda-graph needs one process on a CUDA device" in result.stderr


def test_val_split_holds_out_the_last_training_images(cifar, tmp_path):
    images, labels = write_cifar10(tmp_path / "c")
    d = cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=4, val_split=5)
    assert len(d.train_labels) == 25
    assert d.splits["val"][1].tolist() == labels[25:30].tolist()
    with pytest.raises(cifar["data"].DataError, match="--val-split 30"):
        cifar["data"].ArrayData(tmp_path / "c", torch.device("cpu"), batch_size=4, val_split=30)


# --- schedules -------------------------------------------------------------------------------
def test_milestones_scale_with_the_length(cifar):
    schedule = cifar["train"].Schedule(total=640, spec_total=64000)
    assert schedule.milestones == [320, 480]
    assert [schedule.lr(i) for i in (0, 319, 320, 479, 480, 639)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_resnet110_warm_up_ends_when_the_training_error_is_low(tmp_path):
    train = import_package(compile_to(ROOT / "specs/cifar/resnet110.res", tmp_path / "p"))["train"]
    schedule = train.Schedule(total=64000, spec_total=64000)
    assert schedule.lr(0) == 0.01
    schedule.observe([0.9] * 100)
    assert schedule.lr(100) == 0.01
    schedule.observe([0.7] * 60)  # the last 100: 40 at 0.9, 60 at 0.7 -> 0.78 < 0.80
    assert schedule.lr(160) == 0.1
    assert schedule.lr(32000) == pytest.approx(0.01)


def test_plateau_divides_the_learning_rate(tmp_path):
    spec = write_spec(tmp_path, """
        network p extends "%s"
        train paper_cifar {
            schedule lr * 0.1 on_plateau, patience 2, threshold 0.01
            validate every 100
            warmup   lr 0.02 for 50
        }
    """ % (ROOT / "specs/cifar/resnet20.res"))  # fmt: skip
    train = import_package(compile_to(spec, tmp_path / "p"))["train"]
    schedule = train.Schedule(total=1000, spec_total=64000)
    assert schedule.lr(0) == 0.02 and schedule.lr(1) == 0.1  # warm-up scaled: 50 -> 1
    for error in (0.5, 0.4, 0.395, 0.39):  # 0.395, 0.39: no improvement by 0.01
        schedule.validated(error)
    assert schedule.lr(500) == pytest.approx(0.01)
    assert schedule.validate_every == 2  # 100 of 64000, scaled to 1000


# --- runs ------------------------------------------------------------------------------------
@pytest.mark.long
@pytest.mark.slow
def test_a_short_run_on_real_fashion_mnist_is_far_above_chance(fashion, tmp_path):
    assert (FASHION / "train-images-idx3-ubyte.gz").exists(), (
        "apt-get install dataset-fashion-mnist"
    )
    run = tmp_path / "run"
    result = run_train(fashion, "--out", str(run), "--iterations", "150", "--batch-size", "64",
                       "--eval-images", "2000", "--log-every", "50", "--eval-every", "50")  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["iterations"] == 150
    assert final["test_top1_error"] < 0.35  # chance is 0.90
    assert set(final) >= {"test_top1_error", "test_top5_error", "iterations", "wall_s",
                          "images_per_s"}  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "train_loss" in r]
    assert [r["iteration"] for r in logs] == [50, 100, 150]
    assert set(logs[0]) == {"iteration", "lr", "train_loss", "train_error", "images_per_s"}
    assert logs[-1]["lr"] == pytest.approx(0.001)  # both milestones, scaled to 75 and 113
    assert records[-1] == {"iteration": 150, "split": "test", "protocol": "single_view",
                           "top1_error": final["test_top1_error"],
                           "top5_error": final["test_top5_error"]}  # fmt: skip
    curve = [(r["iteration"], r["split"]) for r in records if "top1_error" in r]
    assert curve == [(50, "test"), (100, "test"), (150, "test")]  # --eval-every, then the end
    assert (final["recipe"], final["backend"]) == ("paper_cifar", "torch")
    checkpoint = torch_checkpoint(run / "checkpoint.pt")
    assert checkpoint["iteration"] == 150
    assert set(checkpoint) >= {"model", "optimizer", "iteration", "rng", "data", "schedule"}
    evaluated = run_train(fashion, "--eval-only", "--checkpoint", str(run / "checkpoint.pt"),
                          "--out", str(run), "--eval-images", "2000")  # fmt: skip
    assert (
        json.loads(evaluated.stdout)["test"]["single_view"]["top1_error"]
        == final["test_top1_error"]
    )


@pytest.mark.long
@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(fashion, tmp_path):
    common = ["--iterations", "30", "--batch-size", "16", "--checkpoint-every", "5",
              "--eval-images", "100", "--log-every", "4"]  # fmt: skip
    assert run_train(fashion, "--out", str(tmp_path / "a"), *common).returncode == 0
    torch_checkpoint(tmp_path / "a" / "checkpoint.pt")  # the first load is slow: not while polling
    run = tmp_path / "b"
    process = subprocess.Popen(
        [sys.executable, str(fashion / "train.py"), "--no-progress", "--out", str(run), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = kill_at_checkpoint(
        process, lambda: torch_checkpoint(run / "checkpoint.pt")["iteration"], 10, timeout=300
    )
    assert killed_at < 30, "the run ended before it could be killed"
    with open(run / "metrics.jsonl", "a") as f:  # as if killed in the middle of a line
        f.write('{"iteration": 2')
    resumed = run_train(fashion, "--out", str(run), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoint.pt'} at iteration {killed_at}" in resumed.stdout
    a = torch_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = torch_checkpoint(run / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise

    assert logged(tmp_path / "a") == logged(run)


@pytest.mark.long
@pytest.mark.slow
def test_two_process_ddp_on_the_cpu(fashion, tmp_path):
    run = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(fashion / "train.py"), "--no-progress", "--out", str(run), "--iterations", "8",
         "--batch-size", "16", "--eval-images", "200", "--log-every", "4"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [4, 8, 8]  # rank 0 alone writes
    final = json.loads((run / "final.json").read_text())
    assert final["iterations"] == 8 and 0 <= final["test_top1_error"] <= 1


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    spec = write_spec(tmp_path, """
        network blowup extends "%s"
        train paper_cifar {
            data       synthetic
            preprocess subtract_mean per_pixel
            optimizer  sgd, lr 1e12
        }
    """ % (ROOT / "specs/cifar/resnet20.res"))  # fmt: skip
    package = compile_to(spec, tmp_path / "pkg")
    run = tmp_path / "run"
    result = run_train(package, "--out", str(run), "--iterations", "30", "--batch-size", "8",
                       "--checkpoint-every", "1", "--log-every", "1")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stopping (the last good checkpoint is" in result.stderr
    state = torch_checkpoint(run / "checkpoint.pt")
    assert state["iteration"] < 30
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values()
               if t.is_floating_point())  # fmt: skip


# --- the generated files ---------------------------------------------------------------------
def test_help_lists_the_flags(fashion):
    result = run_train(fashion, "--help")
    for flag in (
        "--data",
        "--out",
        "--iterations",
        "--batch-size",
        "--device",
        "--seed",
        "--checkpoint-every",
        "--resume",
        "--eval-only",
        "--checkpoint",
        "--val-split",
        "--amp",
        "--no-amp",
        "--compile",
        "--no-compile",
        "--cuda-graph",
        "--no-cuda-graph",
        "--progress",
        "--no-progress",
    ):
        assert flag in result.stdout, flag  # fmt: skip
    assert "/usr/share/datasets/fashion-mnist" in result.stdout


def test_array_packages_hold_no_image_decoding(fashion):
    for name in ("data.py", "train.py"):
        text = (fashion / name).read_text()
        assert "PIL" not in text and "jpeg" not in text.lower() and "--workers" not in text


def test_generated_code_has_no_unused_names(tmp_path):
    from ruff.__main__ import find_ruff_bin

    for spec in ("specs/fashion-mnist/resnet20.res", "specs/cifar/resnet110.res",
                 "specs/variants/wrn_28_10.res", "specs/variants/preact_resnet164.res",
                 "specs/variants/resnet50_d.res"):  # fmt: skip
        out = compile_to(ROOT / spec, tmp_path / Path(spec).stem)
        result = subprocess.run([find_ruff_bin(), "check", "--isolated", "--select", "F,E9",
                                 str(out)], capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stdout


def test_pca_lighting_on_arrays_shifts_each_image_by_one_colour(tmp_path):
    spec = write_spec(tmp_path, """
        network lit extends "%s"
        train paper_cifar {
            augment hflip, pca_lighting 0.1
        }
    """ % (ROOT / "specs/cifar/resnet20.res"))  # fmt: skip
    data = import_package(compile_to(spec, tmp_path / "pkg"))["data"]
    images = torch.rand(4, 3, 32, 32)
    draws = data.draw_augmentation(4, torch.Generator().manual_seed(0))
    out = data.augment(images, {**draws, "flip": torch.zeros(4, dtype=torch.bool)})
    shift = (out - images).flatten(2)  # [N, 3, pixels]: the same at every pixel
    assert torch.allclose(shift, shift[:, :, :1].expand_as(shift), atol=1e-6)
    assert torch.allclose(shift[:, :, 0], draws["colour"], atol=1e-6)
    # each colour is EIGVEC @ (alpha * EIGVAL) with alpha ~ N(0, 0.1): recover alpha
    eigval, eigvec = torch.from_numpy(data.EIGVAL), torch.from_numpy(data.EIGVEC)
    many = data.draw_augmentation(4000, torch.Generator().manual_seed(1))["colour"]
    alpha = torch.linalg.solve(eigvec, many.T).T / eigval
    assert abs(alpha.std().item() - 0.1) < 0.005 and abs(alpha.mean().item()) < 0.005


# --- safe on every CPU -------------------------------------------------------------------------
WIDE_64 = """
    network wide64 {
        input    1x64x64
        classes  10
        stem     cifar, width 8
        block    basic
        shortcut B
        stage a: 1 x 8
        stage b: 1 x 16, stride 2
    }
    train paper_cifar {
        data       mnist
        preprocess pad_to 64
        augment    hflip
        batch      4
    }
"""


def test_a_64x64_network_with_a_strided_8_to_16_projection_trains_on_the_cpu(tmp_path):
    """The case that corrupts the heap with channels_last on some CPUs (issue 11): on the CPU the
    trainer keeps the contiguous format unless asked otherwise."""
    package = compile_to(write_spec(tmp_path, WIDE_64), tmp_path / "pkg")
    write_mnist(tmp_path / "mnist")
    run = tmp_path / "run"
    result = run_train(package, "--data", str(tmp_path / "mnist"), "--out", str(run),
                       "--iterations", "3", "--eval-images", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    weight = torch_checkpoint(run / "checkpoint.pt")["model"]["layer2.0.downsample.0.weight"]
    assert weight.shape == (16, 8, 1, 1) and weight.is_contiguous()
    assert "--channels-last" in run_train(package, "--help").stdout


# --- every fault one line, the last good state kept -------------------------------------------
@pytest.fixture(scope="module")
def tiny_fashion(fashion, tmp_path_factory) -> Path:
    """MNIST-format files of 20 images, for the Fashion-MNIST package's quick runs."""
    root = tmp_path_factory.mktemp("tiny") / "fm"
    write_mnist(root)
    return root


def quick(tiny_fashion: Path, run: Path, *more: str) -> list[str]:
    return ["--data", str(tiny_fashion), "--out", str(run), "--batch-size", "4",
            "--eval-images", "8", *more]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(fashion, tiny_fashion, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("done") / "run"
    result = run_train(fashion, *quick(tiny_fashion, run, "--iterations", "2"))
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize(
    "flags",
    [["--batch-size", "0"], ["--batch-size", "-4"], ["--checkpoint-every", "0"],
     ["--eval-images", "0"], ["--eval-images", "-1"], ["--iterations", "0"],
     ["--iterations", "-5"], ["--log-every", "0"], ["--val-split", "-1"], ["--eval-only"],
     ["--iterations", "many"]],
)  # fmt: skip
def test_flags_out_of_range_are_one_line_usage_errors(fashion, flags, capsys):
    train = import_package(fashion)["train"]
    with pytest.raises(SystemExit) as stop:
        train.parse_args(flags)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert flags[0] in err


def test_a_usage_error_starts_nothing(fashion, tmp_path):
    result = run_train(fashion, "--out", str(tmp_path / "run"), "--iterations", "-5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        "error: argument --iterations: must be a positive integer, not -5 (see train.py --help)\n"
    )
    assert not (tmp_path / "run").exists()


def test_bad_checkpoints_are_refused_by_name_and_left_in_place(fashion, finished_run, tmp_path):
    pkg = import_package(fashion)
    train = pkg["train"]
    RunError = train.runtime.RunError
    good = (finished_run / "checkpoint.pt").read_bytes()
    state = torch_checkpoint(finished_run / "checkpoint.pt")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    cases = {
        "missing.pt": (None, "does not exist"),
        "empty.pt": (b"", "is not a checkpoint written by a resdsl trainer"),
        "text.pt": (b"hello\n", "is not a checkpoint written by a resdsl trainer"),
        "random.pt": (np.random.default_rng(0).bytes(5000), "is not a checkpoint written by"),
        "truncated.pt": (good[: len(good) // 3], "is damaged or cut short"),
        "flipped.pt": (bytes(flipped), "is damaged or cut short"),
        "jax.msgpack": (
            b"\x82\xa1a\x01\xa1b\x02",
            "is a JAX trainer's checkpoint (Flax's msgpack)",
        ),
        "format1.pt": (b"resdsl checkpoint 1\n{}\n", "a checkpoint of an earlier resdsl trainer"),
    }
    linear = {"model": torch.nn.Linear(2, 2).state_dict()}
    for name, written in {"other_spec.pt": train.runtime.seal(state, "specs/other.res", train.tensor_bytes),
                          "other_net.pt": train.runtime.seal(linear, train.SPEC, train.tensor_bytes),
                          "plain_torch.pt": linear["model"]}.items():  # fmt: skip
        buffer = io.BytesIO()
        torch.save(written, buffer)
        (tmp_path / name).write_bytes(buffer.getvalue())
    cases["other_spec.pt"] = (None, f"is a checkpoint of specs/other.res, not of {train.SPEC}")
    cases["other_net.pt"] = (None, "does not hold weights of this network")
    cases["plain_torch.pt"] = (
        None,
        "is not a checkpoint of a resdsl trainer (it has no `resdsl` entry)",
    )
    model = pkg["model"].build_model()
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(RunError, match="^" + re.escape(str(path))) as error:
            train.load_checkpoint(path, model, torch.device("cpu"))
        assert message in str(error.value) and "\n" not in str(error.value), name
        assert (path.read_bytes() if path.exists() else None) == before  # left as it was
    # the same, from the command line: one line, exit status 1
    result = run_train(fashion, "--eval-only", "--checkpoint", str(tmp_path / "flipped.pt"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'flipped.pt'} is damaged")


def test_damaged_or_wrong_data_files_are_data_errors_naming_the_file(fashion, tmp_path):
    data = import_package(fashion)["data"]
    root = tmp_path / "fm"
    good = gzip.decompress
    write_mnist(root)
    images = root / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    for broken in (whole[: len(whole) // 2], b"\x1f\x8b\x08\x00garbage" * 10, b"garbage"):
        images.write_bytes(broken)
        with pytest.raises(data.DataError, match=f"^{images}"):
            data.load_arrays(root)
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))  # a 6-byte header
    with pytest.raises(data.DataError, match=f"^{images} is cut short"):
        data.load_arrays(root)
    images.write_bytes(whole)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        labels = root / f"{name}.gz"
        original = labels.read_bytes()
        values = np.frombuffer(good(original)[8:], np.uint8).copy()
        values[3] = 10
        write_idx(root / name, values, compress=True)
        with pytest.raises(data.DataError, match=f"^{labels} holds a label 10 .*10 classes"):
            data.load_arrays(root)
        labels.write_bytes(original)


def test_a_full_disk_stops_with_one_line_and_no_temporary_file(fashion, tiny_fashion, tmp_path):
    run = tmp_path / "run"
    # files of at most 195 KiB: the checkpoint cannot be written. The limit is set by a shell
    # before it execs the trainer, not in a forked copy of this (multithreaded) test process.
    small_files = "trap '' XFSZ; ulimit -f 195; exec \"$@\""
    result = subprocess.run(
        ["bash", "-c", small_files, "bash", sys.executable, str(fashion / "train.py"),
         "--no-progress", *quick(tiny_fashion, run, "--iterations", "2")],
        capture_output=True, text=True, cwd=fashion.parent, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == (
        f"error: cannot write {run / 'checkpoint.pt'}: File too large; stopping (no checkpoint "
        "was written)\n"
    )
    assert sorted(p.name for p in run.iterdir()) == ["lock", "mean.pt", "metrics.jsonl"]


def test_a_reader_that_goes_away_does_not_stop_the_run(fashion, tiny_fashion, tmp_path):
    """`train.py | head`: once the pipe is closed, the run goes on without printing."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(fashion / "train.py"), "--no-progress",
         *quick(tiny_fashion, run, "--iterations", "6", "--log-every", "1")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=fashion.parent,
    )  # fmt: skip
    assert process.stdout.readline().startswith("iter ")
    process.stdout.close()  # as head does after its lines
    stderr = process.stderr.read()
    assert process.wait() == 0 and stderr == "", stderr
    assert json.loads((run / "final.json").read_text())["iterations"] == 6
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6 + 1


def test_resuming_a_finished_run_changes_nothing(fashion, tiny_fashion, finished_run):
    def files() -> dict:  # the lock file names whoever holds the directory: not the run's
        return {p.name: p.read_bytes() for p in finished_run.iterdir() if p.name != "lock"}

    before = files()
    result = run_train(fashion, *quick(tiny_fashion, finished_run, "--iterations", "2", "--resume"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{finished_run} holds a finished run (2 iterations")
    assert files() == before


def test_the_run_directory_is_held_by_one_run_at_a_time(tmp_path):
    first = runtime.RunDirectory(tmp_path / "run", "checkpoint.pt")
    first.hold(resume=False)  # nothing written yet but the lock
    second = runtime.RunDirectory(tmp_path / "run", "checkpoint.pt")
    with pytest.raises(runtime.RunError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
        second.hold(resume=True)
    first.lock_file.close()  # the first run ends: the directory is free
    second.hold(resume=True)


@pytest.mark.slow
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_says_how_to_go_on(
    fashion, tiny_fashion, tmp_path
):
    """Ctrl-C (SIGINT) stops a run, which goes on with the command it prints; SIGTERM stops that
    one. A second run on the directory is refused while the first holds it."""
    import signal
    import time

    run = tmp_path / "run"
    args = [str(fashion / "train.py"), "--no-progress",
            *quick(tiny_fashion, run, "--iterations", "1000000", "--log-every", "1")]  # fmt: skip

    def start_and_stop(command: list[str], signum: int, after: int) -> tuple[int, str]:
        """Start `command`, send `signum` once `after` iterations are logged: (the checkpoint's
        iteration, stderr)."""
        process = subprocess.Popen(command, cwd=fashion.parent, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 300
        while last_logged(run) < after:
            assert time.time() < deadline and process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        if signum == signal.SIGINT:  # meanwhile, a second run on the same directory
            second = run_train(fashion, *quick(tiny_fashion, run, "--iterations", "5"))
            assert second.returncode == 1 and second.stderr == (
                f"error: {run} is in use by another run (pid {process.pid}); wait for it to "
                "end, or train into another directory (--out)\n"
            )
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 128 + signum, stderr
        return torch_checkpoint(run / "checkpoint.pt")["iteration"], stderr

    stopped, stderr = start_and_stop([sys.executable, *args], signal.SIGINT, 3)
    command = shlex.join([sys.executable, *args, "--resume"])
    assert stderr == f"stopped at iteration {stopped}; go on with: {command}\n"
    assert logged(run)[-1]["iteration"] <= stopped
    again, stderr = start_and_stop(shlex.split(command), signal.SIGTERM, stopped + 3)
    assert stderr.startswith(f"stopped at iteration {again}; go on with: {command}\n")
    assert again > stopped and logged(run)[-1]["iteration"] <= again


def test_runtime_py_is_the_shared_module_as_it_is():
    """Both backends' trainers carry templates/common/runtime.py unchanged (after the header),
    which imports nothing outside the standard library (tqdm: the progress bar)."""
    from resdsl.compile import build_files

    source = (ROOT / "templates/common/runtime.py").read_text()
    spec_and_analysis = load_spec("specs/fashion-mnist/resnet20.res")
    for backend in ("torch", "jax"):
        files = build_files(*spec_and_analysis, backend=backend)
        header, _, rest = files["runtime.py"].partition('"""')
        assert '"""' + rest == source and header.startswith("# Generated by resdsl")
        assert "import runtime" in files["train.py"] and "from resdsl" not in rest
        assert "import resdsl" not in rest
