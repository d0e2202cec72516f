"""Preprocessing that travels with the model, and predict.py: the package's Preprocess (JAX:
data.preprocess) is the data pipeline's test-time preprocessing, its statistics are in the
checkpoint, and predict.py names the classes of image files and of the dataset's test images, in
both backends."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import load_spec
from tests.helpers import ROOT, jax_checkpoint, torch_checkpoint
from tests.test_torch_trainer import compile_to, import_package, run_train

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"]  # fmt: skip


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> tuple[Path, Path]:
    """The Fashion-MNIST ResNet-20 package and a checkpoint of 20 iterations of it."""
    directory = tmp_path_factory.mktemp("predict")
    package = compile_to(ROOT / "specs/fashion-mnist/resnet20.res", directory / "pkg")
    result = run_train(package, "--out", str(directory / "run"), "--iterations", "20",
                       "--batch-size", "32", "--eval-images", "200", "--eval-every", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return package, directory / "run" / "checkpoint.pt"


def fashion_test_images(count: int) -> np.ndarray:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        return (
            np.frombuffer(f.read()[16 : 16 + 784 * count], np.uint8).reshape(count, 28, 28).copy()
        )


def test_preprocess_is_the_pipelines_test_time_preprocessing(fashion_run):
    package, checkpoint = fashion_run
    data = import_package(package)["data"]
    arrays = data.ArrayData(FASHION, torch.device("cpu"), batch_size=32)
    images, _ = next(arrays.eval_batches("test", 8))
    raw = torch.from_numpy(fashion_test_images(8)).float()[:, None] / 255
    torch.testing.assert_close(arrays.preprocess(raw), images)  # padded to 32, the mean taken
    saved = data.Preprocess()
    saved.load_state_dict(torch_checkpoint(checkpoint)["preprocess"])
    torch.testing.assert_close(saved(raw), images)  # the checkpoint's statistics: the same


def predict(package: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(package / "predict.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_predict_names_the_classes_of_image_files_and_test_images(fashion_run, tmp_path):
    package, checkpoint = fashion_run
    boot = fashion_test_images(1)[0]  # test image 0: an ankle boot
    Image.fromarray(boot).save(tmp_path / "boot.png")
    Image.fromarray(boot).convert("RGB").resize((56, 56)).save(tmp_path / "big.jpg")
    files = predict(package, "--checkpoint", str(checkpoint), str(tmp_path / "boot.png"),
                    str(tmp_path / "big.jpg"))  # fmt: skip
    assert files.returncode == 0, files.stderr
    png, jpg = files.stdout.splitlines()
    assert png.startswith(f"{tmp_path / 'boot.png'}: ") and jpg.startswith(
        f"{tmp_path / 'big.jpg'}: "
    )
    shown = [part.rsplit(" ", 1) for part in png.split(": ", 1)[1].split(", ")]
    assert len(shown) == 5 and {name for name, _ in shown} <= set(NAMES)
    percents = [float(p.rstrip("%")) for _, p in shown]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.1
    tests = predict(package, "--checkpoint", str(checkpoint), "--test", "3", "--top", "2")
    assert tests.returncode == 0, tests.stderr
    lines = tests.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("test image 0 (Ankle boot): ")
    assert (
        lines[0].split(": ", 1)[1]
        == png.split(": ", 1)[1].split(", ", 2)[0] + ", " + (png.split(": ", 1)[1].split(", ")[1])
    )  # the file and the dataset's image: the same prediction
    assert lines[1].startswith("test image 3333 (") and lines[2].startswith("test image 6666 (")


def test_predict_errors_are_one_line(fashion_run, tmp_path):
    package, checkpoint = fashion_run
    (tmp_path / "notes.png").write_text("not an image")
    for args, message in (
        ([str(tmp_path / "notes.png")], f"cannot read {tmp_path / 'notes.png'}"),
        ([], "give image files, or --test N"),
    ):
        result = predict(package, "--checkpoint", str(checkpoint), *args)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- JAX ----------------------------------------------------------------------------------------
def run_jax(package: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """A script of a JAX package on the CPU (JAX says nothing there about a missing GPU)."""
    return subprocess.run([sys.executable, str(package / script), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip


@pytest.fixture(scope="module")
def jax_fashion_run(tmp_path_factory) -> tuple[Path, Path]:
    """The Fashion-MNIST ResNet-20 JAX package and a checkpoint of 20 iterations of it."""
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    directory = tmp_path_factory.mktemp("predict_jax")
    package = compile_spec(*load_spec(ROOT / "specs/fashion-mnist/resnet20.res"), backend="jax",
                           output=directory / "pkg", force=True)  # fmt: skip
    result = run_jax(package, "train.py", "--no-progress", "--out", str(directory / "run"),
                     "--iterations", "20", "--batch-size", "32", "--eval-images", "200",
                     "--eval-every", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return package, directory / "run" / "checkpoint.msgpack"


@pytest.mark.long
def test_jax_preprocess_is_the_pipelines_test_time_preprocessing(jax_fashion_run):
    import jax

    package, checkpoint = jax_fashion_run
    data = import_package(package)["data"]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    arrays = data.ArrayData(FASHION, mesh, batch_size=32)
    images, _ = next(arrays.eval_batches("test", 8))
    raw = fashion_test_images(8)[..., None].astype(np.float32) / 255  # channels last
    ours = data.preprocess(raw, arrays.preprocess_statistics)  # padded to 32, the mean taken
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(images))
    saved = jax_checkpoint(checkpoint)
    assert saved["classes"] == NAMES and list(saved["preprocess"]) == ["mean"]
    assert saved["preprocess"]["mean"].shape == (32, 32, 1)
    ours = data.preprocess(raw, saved["preprocess"])  # the checkpoint's statistics: the same
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(images))


@pytest.mark.long
def test_jax_predict_names_the_classes_of_image_files_and_test_images(jax_fashion_run, tmp_path):
    package, checkpoint = jax_fashion_run
    for script in ("predict.py", "export.py"):
        text = (package / script).read_text()
        assert "import torch" not in text and "from torch" not in text
    boot = fashion_test_images(1)[0]  # test image 0: an ankle boot
    Image.fromarray(boot).save(tmp_path / "boot.png")
    Image.fromarray(boot).convert("RGB").resize((56, 56)).save(tmp_path / "big.jpg")
    files = run_jax(package, "predict.py", "--checkpoint", str(checkpoint),
                    str(tmp_path / "boot.png"), str(tmp_path / "big.jpg"))  # fmt: skip
    assert files.returncode == 0, files.stderr
    png, jpg = files.stdout.splitlines()
    assert png.startswith(f"{tmp_path / 'boot.png'}: ")
    assert jpg.startswith(f"{tmp_path / 'big.jpg'}: ")
    shown = [part.rsplit(" ", 1) for part in png.split(": ", 1)[1].split(", ")]
    assert len(shown) == 5 and {name for name, _ in shown} <= set(NAMES)
    percents = [float(p.rstrip("%")) for _, p in shown]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.1
    tests = run_jax(package, "predict.py", "--checkpoint", str(checkpoint), "--test", "3",
                    "--top", "2")  # fmt: skip
    assert tests.returncode == 0, tests.stderr
    lines = tests.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("test image 0 (Ankle boot): ")
    # the file and the dataset's image: the same prediction
    assert lines[0].split(": ", 1)[1] == ", ".join(png.split(": ", 1)[1].split(", ")[:2])
    assert lines[1].startswith("test image 3333 (") and lines[2].startswith("test image 6666 (")


@pytest.mark.long
def test_jax_predict_errors_are_one_line(jax_fashion_run, tmp_path):
    package, checkpoint = jax_fashion_run
    (tmp_path / "notes.png").write_text("not an image")
    for args, message in (
        ([str(tmp_path / "notes.png")], f"cannot read {tmp_path / 'notes.png'}"),
        ([], "give image files, or --test N"),
    ):
        result = run_jax(package, "predict.py", "--checkpoint", str(checkpoint), *args)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
