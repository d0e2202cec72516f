"""The generated image-folder pipeline of the PyTorch trainer: ImageFolder trees of real JPEG and
PNG files, crop geometry on images whose pixels encode their coordinates, PCA lighting, the
training mean, determinism over loader processes and process shards, resume, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import build_files
from resdsl.frontend import load_spec
from tests.helpers import ROOT, kill_at_checkpoint, logged, torch_checkpoint
from tests.test_torch_trainer import compile_to, import_package, run_train, write_spec

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

CPU = torch.device("cpu")
CLASSES = ["b_dog", "a_cat", "c_emu"]  # written unsorted; labels follow the sorted names

TINY = """
    network tiny {
        input    3x64x64
        classes  3
        stem     cifar, width 8
        block    basic
        shortcut B
        stage a: 1 x 8
        stage b: 1 x 16, stride 2
    }
    train paper_imagenet {
        %s
    }
"""
FULL = """
        augment  scale_shorter 72..96, random_crop 64, hflip, pca_lighting 0.1
        eval     single_view, ten_crop 72, multiscale 64 72 96
        batch    4
        validate every 4
        length   8 iterations
"""
LEAN = """
        preprocess subtract_mean per_channel
        augment    scale_shorter 64..80, random_crop 64
        eval       single_view 64
        batch      4
        validate   every 1
        length     2 epochs
"""


# --- image folders in the real on-disk format ------------------------------------------------
def coordinates(width: int, height: int) -> np.ndarray:
    """An RGB image whose red is the column, green the row, blue their sum mod 256."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([x, y, (x + y) % 256], axis=-1).astype(np.uint8)


def write_tree(root: Path, train: int = 6, val: int = 2, seed: int = 0) -> None:
    """ROOT/{train,val}/<class>/ with JPEG and PNG files of varied sizes, aspect ratios and modes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            (folder / "notes.txt").write_text("not an image")
            for i in range(count):
                width, height = rng.integers(48, 140, size=2)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i % 3 == 0:
                    image.save(folder / f"{i}.png")
                elif i % 3 == 1:
                    image.save(folder / f"{i}.JPEG", quality=90)
                else:
                    image.convert("L").save(folder / f"{i}.jpg")  # grey, read as RGB


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("folder")
    return compile_to(write_spec(directory, TINY % FULL), directory / "pkg")


@pytest.fixture(scope="module")
def pkg(package) -> dict:
    return import_package(package)


@pytest.fixture(scope="module")
def data(pkg):
    return pkg["data"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images") / "imagenet"
    write_tree(root)
    return root


def folder_data(data, root: Path, **options):
    return data.FolderData(root, CPU, **{"batch_size": 4, "workers": 0, **options})


class Draws:
    """A stand-in for numpy's Generator: chosen integers, flip or not, and lighting alphas; it
    records the ranges it was asked for."""

    def __init__(self, integers: list[int], flip: bool = False, alpha=(0.0, 0.0, 0.0)) -> None:
        self.integers_left, self.flip, self.alpha, self.asked = list(integers), flip, alpha, []

    def integers(self, low: int, high: int) -> int:
        self.asked.append((low, high))
        return self.integers_left.pop(0)

    def random(self) -> float:
        return 0.0 if self.flip else 0.99

    def normal(self, loc: float, scale: float, size: int) -> np.ndarray:
        return np.array(self.alpha)


# --- the files ---------------------------------------------------------------------------------
def test_labels_follow_the_sorted_class_folders_and_both_formats_are_read(data, tree):
    d = folder_data(data, tree)
    paths, labels = d.train
    names = [os.fsdecode(p) for p in paths]
    assert labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert all(
        n.startswith(f"train{os.sep}{sorted(CLASSES)[y]}{os.sep}") for n, y in zip(names, labels)
    )
    assert {Path(n).suffix for n in names} == {".png", ".JPEG", ".jpg"}  # notes.txt is not listed
    assert d.splits["test"][1].tolist() == [0, 0, 1, 1, 2, 2] and set(d.splits) == {"test"}
    assert not hasattr(d, "iterations_per_epoch")  # a length in iterations has no use for it
    png = tree / "train" / "a_cat" / "0.png"
    assert np.array_equal(np.asarray(data.decode(str(png))), np.asarray(Image.open(png)))
    grey = data.decode(str(tree / "train" / "a_cat" / "2.jpg"))
    assert grey.mode == "RGB" and np.ptp(np.asarray(grey).astype(int), axis=2).max() == 0
    jpeg = np.asarray(data.decode(str(tree / "train" / "a_cat" / "1.JPEG"))).astype(int)
    assert jpeg.shape[2] == 3 and jpeg.std() > 30  # decoded noise, not a blank


def test_val_split_holds_out_images_spread_over_the_classes(data, tree):
    d = folder_data(data, tree, val_split=3)
    assert len(d.train[1]) == 15 and d.splits["val"][1].tolist() == [0, 1, 2]
    whole = folder_data(data, tree)
    assert d.splits["val"][0].tolist() == whole.train[0][[0, 6, 12]].tolist()
    assert not set(d.splits["val"][0].tolist()) & set(d.train[0].tolist())


def test_eval_images_spread_over_the_classes(data, tree):
    d = folder_data(data, tree)
    labels = torch.cat([y for _, y in d.eval_batches("test", "single_view", 3)])
    assert labels.tolist() == [0, 1, 2]
    with pytest.raises(data.DataError, match="--val-split 18: the training split has 18 images"):
        folder_data(data, tree, val_split=18)


# --- geometry on known inputs ------------------------------------------------------------------
def test_resize_keeps_the_aspect_ratio(data):
    for width, height, size in ((120, 90, 72), (50, 200, 64), (80, 80, 96)):
        resized = data.resize_shorter(Image.fromarray(coordinates(width, height)), size)
        assert min(resized.size) == size
        assert resized.size[0] / resized.size[1] == pytest.approx(width / height, rel=0.02)


def test_the_random_crop_is_a_crop_of_the_resized_image_and_the_flip_its_mirror(data):
    image = Image.fromarray(coordinates(120, 72))  # shorter side 72: drawing 72 keeps it as is
    draws = Draws([72, 5, 30])
    out = data.augment(image, draws)
    assert draws.asked == [(72, 97), (0, 72 - 64 + 1), (0, 120 - 64 + 1)]
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert np.array_equal(np.rint(out * 255), coordinates(120, 72)[5:69, 30:94].transpose(2, 0, 1))
    flipped = data.augment(image, Draws([72, 5, 30], flip=True))
    assert np.array_equal(flipped, out[..., ::-1])
    draws = Draws([80, 3, 11])  # a rescaled image: the crop is a window of it
    out = data.augment(image, draws)
    resized = data.to_float(data.resize_shorter(image, 80))
    assert resized.shape == (3, 80, 133) and draws.asked[2] == (0, 133 - 64 + 1)
    assert np.array_equal(out, resized[:, 3:67, 11:75])


def test_draws_cover_every_scale_and_both_flips(data, monkeypatch):
    scales = []

    def recording(image, size):
        scales.append(size)
        return original(image, size)

    original = data.resize_shorter
    monkeypatch.setattr(data, "resize_shorter", recording)
    image = Image.fromarray(coordinates(72, 72))
    outs = [data.augment(image, data.sample_rng(0, 0, i)) for i in range(400)]
    assert sorted(set(scales)) == list(range(72, 97))
    left_red = [out[0, 0, 0] < out[0, 0, -1] for out in outs]  # red grows to the right unflipped
    assert 0.4 < np.mean(left_red) < 0.6


def test_lighting_adds_one_colour_along_the_principal_components(data):
    image = Image.fromarray(coordinates(72, 72))
    plain = data.augment(image, Draws([72, 4, 4]))
    alpha = (0.3, -0.2, 0.5)
    lit = data.augment(image, Draws([72, 4, 4], alpha=alpha))
    shift = lit - plain
    expected = data.EIGVEC @ (np.array(alpha) * data.EIGVAL)
    assert np.allclose(shift, expected[:, None, None], atol=1e-6)  # the same for every pixel
    assert np.allclose(data.EIGVEC.T @ data.EIGVEC, np.eye(3), atol=1e-3)  # orthonormal vectors
    noise = data.lighting_noise(np.random.default_rng(0), 0.1)
    alphas = np.random.default_rng(0).normal(0.0, 0.1, size=3)
    assert np.allclose(noise.ravel(), data.EIGVEC @ (alphas * data.EIGVAL), atol=1e-7)


def test_single_view_is_the_centre_crop(data):
    pixels = coordinates(100, 73).transpose(2, 0, 1) / 255
    view = data.centre_view(Image.fromarray(coordinates(100, 73)))  # the default resize, 73
    assert data.SINGLE_VIEW_RESIZE == round(64 * 256 / 224)
    assert np.allclose(view, pixels[:, 4:68, 18:82], atol=1e-7)


def test_ten_crop_is_the_corners_and_centre_and_their_mirrors(data):
    pixels = coordinates(100, 72).transpose(2, 0, 1) / 255
    views = data.EVAL_VIEWS["ten_crop"](Image.fromarray(coordinates(100, 72)))  # resize 72
    assert views.shape == (10, 3, 64, 64)
    windows = [(0, 0), (0, 36), (8, 0), (8, 36), (4, 18)]  # top left, top right, bottom left, ...
    for view, (top, left) in zip(views, windows):
        assert np.allclose(view, pixels[:, top : top + 64, left : left + 64], atol=1e-7)
    assert np.array_equal(views[5:], views[:5, ..., ::-1])


def test_multiscale_views_are_whole_images_at_each_shorter_side_and_mirrored(data):
    image = Image.fromarray(coordinates(130, 72))
    views = data.EVAL_VIEWS["multiscale"](image)
    assert [v.shape for v in views] == [(2, 3, 64, 115), (2, 3, 72, 130), (2, 3, 96, 173)]
    assert np.allclose(views[1][0], coordinates(130, 72).transpose(2, 0, 1) / 255, atol=1e-7)
    for view in views:
        assert np.array_equal(view[1], view[0][..., ::-1])


def test_the_fully_convolutional_score_is_the_logits(pkg):
    torch.manual_seed(0)
    model = pkg["model"].build_model().eval()
    with torch.no_grad():
        for x in (torch.randn(2, 3, 64, 64), torch.randn(2, 3, 72, 96)):
            assert torch.allclose(pkg["train"].fully_convolutional(model, x), model(x), atol=1e-5)
        views = [torch.randn(2, 3, 64, 80), torch.randn(2, 3, 96, 120)]
        scores = pkg["train"].multiscale(model, views)
        assert scores.shape == (1, 3) and torch.allclose(scores.sum(), torch.tensor(1.0))


# --- the mean ----------------------------------------------------------------------------------
def test_the_per_pixel_mean_is_of_the_single_views_and_cached(data, tree, tmp_path):
    cache = tmp_path / "run" / "mean.pt"
    d = folder_data(data, tree, mean_cache=cache)
    views = [data.centre_view(data.decode(str(tree / os.fsdecode(p)))) for p in d.train[0]]
    saved = torch.load(cache)
    assert saved["count"] == 18 and saved["mean"].shape == (3, 64, 64)
    assert np.allclose(saved["mean"].numpy(), np.mean(views, axis=0), atol=1e-6)
    assert list(tmp_path.joinpath("run").iterdir()) == [cache]  # no temporary file left
    first_test = data.decode(str(tree / os.fsdecode(d.splits["test"][0][0])))
    views, _ = next(d.eval_batches("test", "single_view"))
    assert np.allclose(views[0].numpy(), data.centre_view(first_test) - d.mean, atol=1e-6)
    torch.save({"mean": torch.zeros(3, 64, 64), "count": 18}, cache)  # read back, not recomputed
    assert not folder_data(data, tree, mean_cache=cache).mean.any()
    folder_data(data, tree, mean_cache=cache, val_split=2)  # other training images: recomputed
    assert torch.load(cache)["count"] == 16


def test_the_mean_image_is_resized_to_multiscale_views(data):
    mean = np.full((3, 64, 64), 0.25, np.float32)
    mean[0] = 0.5
    views = np.ones((2, 3, 72, 100), np.float32)
    out = data.subtract_mean(views, mean)
    assert out.shape == views.shape
    assert np.allclose(out[:, 0], 0.5) and np.allclose(out[:, 1:], 0.75)


def test_the_mean_sample_spreads_evenly_over_large_sets(data):
    assert data.mean_sample(5).tolist() == [0, 1, 2, 3, 4]
    chosen = data.mean_sample(1_281_167)
    assert len(chosen) == data.MEAN_IMAGES == 10_000 and len(set(chosen.tolist())) == 10_000
    assert chosen[0] == 0 and chosen[-1] == 1_281_166 and np.all(np.diff(chosen) > 0)


def test_a_lean_spec_renders_only_what_it_uses(tmp_path, tree):
    package = compile_to(write_spec(tmp_path, TINY % LEAN), tmp_path / "lean")
    text = (package / "data.py").read_text()
    for absent in ("EIGVAL", "lighting", "ten_crop", "multiscale", "functools", "resize_mean",
                   "flip"):  # fmt: skip
        assert absent not in text, absent
    data = import_package(package)["data"]
    d = folder_data(data, tree)
    views = [data.centre_view(data.decode(str(tree / os.fsdecode(p)))) for p in d.train[0]]
    assert d.mean.shape == (3, 1, 1)  # per channel: a mean colour
    assert d.iterations_per_epoch == 18 // 4  # its length is in epochs
    assert np.allclose(d.mean.ravel(), np.mean(views, axis=(0, 2, 3)), atol=1e-6)
    assert data.SINGLE_VIEW_RESIZE == 64


# --- batches -----------------------------------------------------------------------------------
def test_batches_do_not_depend_on_the_number_of_workers(package, tree):
    # Loader processes are forked: compare in a fresh process, not in this one, which may hold
    # JAX's threads (forking them can deadlock).
    script = f"""
import sys
import torch
sys.path.insert(0, {str(package)!r})
import data

def batches(workers):
    d = data.FolderData({str(tree)!r}, torch.device("cpu"), batch_size=4, workers=workers, seed=5)
    train = [d.train_batch() for _ in range(6)]  # crosses an epoch (18 images, 4 batches)
    evaluated = [list(d.eval_batches("test", p)) for p in ("single_view", "ten_crop")]
    return train, evaluated

(train0, eval0), (train2, eval2) = batches(0), batches(2)
for (x0, y0), (x2, y2) in zip(train0, train2, strict=True):
    assert x0.shape == (4, 3, 64, 64) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
for protocol0, protocol2 in zip(eval0, eval2, strict=True):
    for (v0, l0), (v2, l2) in zip(protocol0, protocol2, strict=True):
        assert torch.equal(v0, v2) and torch.equal(l0, l2)
assert not torch.equal(train0[0][0], train0[4][0])  # a new epoch, a new order and new draws
print("same batches")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "same batches"


def test_process_shards_make_the_global_batch(data, tree):
    def run(rank, world):
        d = folder_data(data, tree, rank=rank, world=world, seed=1)
        train = [d.train_batch() for _ in range(5)]
        return train, list(d.eval_batches("test", "single_view", 5))

    whole, halves = run(0, 1), [run(0, 2), run(1, 2)]
    for i, (images, labels) in enumerate(whole[0]):
        assert torch.equal(torch.cat([h[0][i][0] for h in halves]), images)
        assert torch.equal(torch.cat([h[0][i][1] for h in halves]), labels)
    parts = [torch.cat([labels for _, labels in h[1]]) for h in halves]
    assert [len(p) for p in parts] == [3, 2]  # the first 5 images, split contiguously
    assert torch.equal(torch.cat(parts), torch.cat([labels for _, labels in whole[1]]))


def test_evaluation_views_have_the_protocol_shapes(data, tree):
    d = folder_data(data, tree)
    (views, labels), *_ = d.eval_batches("test", "ten_crop")
    assert views.shape == (1, 10, 3, 64, 64) and labels.shape == (1,)  # 4 // 10 -> 1 image
    batches = list(d.eval_batches("test", "multiscale", limit=2))
    assert len(batches) == 2
    for views, labels in batches:
        assert labels.shape == (1,) and [v.shape[:2] for v in views] == [(2, 3)] * 3
        assert [min(v.shape[2:]) for v in views] == [64, 72, 96]


def test_a_restored_state_continues_the_data_order(data, tree):
    d = folder_data(data, tree, seed=2)
    for _ in range(3):
        d.train_batch()
    state = d.state_dict()
    expected = [d.train_batch() for _ in range(4)]
    resumed = folder_data(data, tree, seed=2)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, [resumed.train_batch() for _ in range(4)]):
        assert torch.equal(x, rx) and torch.equal(y, ry)


# --- errors ------------------------------------------------------------------------------------
def test_missing_or_malformed_folders_are_clear_errors(data, tmp_path):
    DataError = data.DataError
    root = tmp_path / "imagenet"
    with pytest.raises(DataError, match=f"{root} does not exist; expected ROOT/train/<class>"):
        folder_data(data, root)
    root.mkdir()
    with pytest.raises(DataError, match=f"{root / 'train'} is not a folder; expected"):
        folder_data(data, root)
    (root / "train").mkdir()
    (root / "train" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="train has no class folders; expected"):
        folder_data(data, root)
    for name in ("a_cat", "b_dog"):
        (root / "train" / name).mkdir()
    with pytest.raises(DataError, match="train has 2 class folders, but the network has 3 classes"):
        folder_data(data, root)
    (root / "train" / "c_emu").mkdir()
    with pytest.raises(DataError, match=f"{root / 'val'} is not a folder"):
        folder_data(data, root)
    for name in ("a_cat", "b_dog", "d_fox"):
        (root / "val" / name).mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"val does not have the class folders .*\(no c_emu; also d_fox\)"
    ):
        folder_data(data, root)


def test_empty_classes_and_undecodable_images_are_clear_errors(data, tmp_path):
    root = tmp_path / "imagenet"
    write_tree(root, train=2, val=1)
    for path in (root / "train" / "c_emu").iterdir():
        path.unlink()
    with pytest.raises(data.DataError, match=f"{root / 'train' / 'c_emu'} has no images"):
        folder_data(data, root)
    Image.fromarray(coordinates(80, 80)).save(root / "train" / "c_emu" / "0.png")
    (root / "val" / "a_cat" / "broken.jpg").write_bytes(b"not a JPEG")
    d = folder_data(data, root)
    with pytest.raises(data.DataError, match=r"cannot decode .*val/a_cat/broken\.jpg"):
        list(d.eval_batches("test", "single_view"))


# --- the trainer -------------------------------------------------------------------------------
def test_a_short_run_reports_every_protocol(package, tree, tmp_path):
    run = tmp_path / "run"
    result = run_train(package, "--data", str(tree), "--out", str(run), "--iterations", "4",
                       "--batch-size", "4", "--workers", "2", "--log-every", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["iterations"] == 4 and set(final["results"]) == {"test"}
    assert list(final["results"]["test"]) == ["single_view", "ten_crop", "multiscale"]
    assert final["test_top1_error"] == final["results"]["test"]["single_view"]["top1_error"]
    assert all(0 <= r["top1_error"] <= 1 for r in final["results"]["test"].values())
    assert torch.load(run / "mean.pt")["mean"].shape == (3, 64, 64)
    checkpoint = torch_checkpoint(run / "checkpoint.pt")
    assert checkpoint["data"] == {"epoch": 1, "position": 0}  # 16 of 18 images: a new epoch


def test_an_undecodable_image_stops_the_trainer_with_its_name(package, tmp_path):
    root = tmp_path / "imagenet"
    write_tree(root, train=2, val=1)
    (root / "train" / "b_dog" / "7.png").write_bytes(b"\x89PNG truncated")
    result = run_train(package, "--data", str(root), "--out", str(tmp_path / "run"),
                       "--iterations", "2", "--workers", "2")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: cannot decode {root / 'train' / 'b_dog' / '7.png'}" in result.stderr


@pytest.mark.long
@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(package, tree, tmp_path):
    common = ["--data", str(tree), "--iterations", "60", "--batch-size", "4", "--workers", "1",
              "--checkpoint-every", "5", "--eval-images", "3", "--log-every", "4"]  # fmt: skip
    assert run_train(package, "--out", str(tmp_path / "a"), *common).returncode == 0
    a = torch_checkpoint(tmp_path / "a" / "checkpoint.pt")  # the first load is slow: not below
    run = tmp_path / "b"
    process = subprocess.Popen(
        [sys.executable, str(package / "train.py"), "--no-progress", "--out", str(run), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=package.parent,
    )  # fmt: skip
    killed_at = kill_at_checkpoint(
        process, lambda: torch_checkpoint(run / "checkpoint.pt")["iteration"], 10, timeout=300
    )
    assert killed_at < 60, "the run ended before it could be killed"
    resumed = run_train(package, "--out", str(run), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoint.pt'} at iteration {killed_at}" in resumed.stdout
    b = torch_checkpoint(run / "checkpoint.pt")
    assert a["data"] == b["data"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise

    assert logged(tmp_path / "a") == logged(run)


# --- the generated files -----------------------------------------------------------------------
def test_folder_packages_have_no_unused_names(package, tmp_path):
    from ruff.__main__ import find_ruff_bin

    paper = compile_to(ROOT / "specs/resnet18.res", tmp_path / "resnet18")
    for out in (package, paper):
        result = subprocess.run([find_ruff_bin(), "check", "--isolated", "--select", "F,E9",
                                 str(out)], capture_output=True, text=True, check=False)  # fmt: skip
        assert result.returncode == 0, result.stdout
    # the shared pipeline is numpy and PIL, reusable by the JAX package: torch (torchvision's
    # transforms) only in the packages of specs with photo augmentations
    spec, analysis = load_spec(ROOT / "specs/resnet18.res")
    jax_data = build_files(spec, analysis, backend="jax")["data.py"]
    assert "import torch" not in jax_data and "torch." not in jax_data
