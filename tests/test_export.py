"""export.py of the generated packages: ONNX and torch.export for PyTorch, StableHLO for JAX,
each from a checkpoint that the package's own train.py wrote, at more than one batch size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import load_spec
from tests.helpers import jax_checkpoint, torch_checkpoint

# A small network on synthetic images: a few seconds to train two iterations and export.
TINY = """\
network tiny {
    input    3x16x16
    classes  10
    stem     cifar
    block    basic
    shortcut A
    stage: 1 x 16
    stage: 1 x 32, stride 2
}
train paper_cifar {
    data       synthetic
    preprocess subtract_mean per_pixel
    augment    pad 2, random_crop 16, hflip
}
"""


def compile_tiny(directory: Path, backend: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "tiny.res"
    spec_path.write_text(TINY)
    spec, analysis = load_spec(spec_path)
    return compile_spec(spec, analysis, backend=backend, output=directory / "pkg", force=True)


def run(package: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(package / script), *args],
        capture_output=True, text=True, cwd=package.parent, timeout=300,
    )  # fmt: skip


def train_two_iterations(package: Path) -> Path:
    """The checkpoint of a two-iteration run of the package's train.py."""
    out = package.parent / "run"
    result = run(package, "train.py", "--no-progress", "--out", str(out), "--iterations", "2",
                 "--batch-size", "8", "--eval-images", "20")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return next(out.glob("checkpoint.*"))


def load_module(path: Path, name: str):
    """A generated module (model.py), imported under its own name beside its package's."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- PyTorch ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    package = compile_tiny(tmp_path_factory.mktemp("torch"), "torch")
    return package, train_two_iterations(package)


def trained_torch_model(package: Path, checkpoint: Path):
    model = load_module(package / "model.py", "tiny_torch_model").build_model()
    model.load_state_dict(torch_checkpoint(checkpoint)["model"])
    return model.eval()


@pytest.mark.parametrize("preprocess", [True, pytest.param(False, marks=pytest.mark.long)])
def test_onnx_export_matches_pytorch_at_two_batch_sizes(torch_run, preprocess):
    """By default the graph holds the spec's preprocessing (the training mean image of the
    checkpoint subtracted): it takes images in [0, 1]; with --no-preprocess, the network alone."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    package, checkpoint = torch_run
    output = package.parent / f"tiny_{preprocess}.onnx"
    result = run(package, "export.py", "--checkpoint", str(checkpoint), "--format", "onnx",
                 "-o", str(output), *([] if preprocess else ["--no-preprocess"]))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in output.parent.iterdir() if ".tmp" in p.name] == []
    model = trained_torch_model(package, checkpoint)
    mean = torch_checkpoint(checkpoint)["preprocess"]["mean"]
    assert mean.shape == (3, 16, 16) and float(mean.abs().max()) > 0.1  # the run's mean image
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (images_input,) = session.get_inputs()
    assert images_input.shape[1:] == [3, 16, 16] and isinstance(images_input.shape[0], str)
    for batch in (1, 5):
        images = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(images - mean if preprocess else images).numpy()
        (scores,) = session.run(None, {images_input.name: images.numpy()})
        assert scores.shape == (batch, 10)
        assert np.abs(scores - expected).max() <= 1e-4


def test_torch_export_round_trip_at_two_batch_sizes(torch_run):
    import torch

    package, checkpoint = torch_run
    output = package.parent / "tiny.pt2"
    result = run(package, "export.py", "--checkpoint", str(checkpoint), "--format",
                 "torch-export", "-o", str(output), "--no-preprocess")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {output}" in result.stdout
    program = torch.export.load(str(output)).module()
    model = trained_torch_model(package, checkpoint)
    for batch in (2, 7):
        images = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert torch.equal(program(images), model(images))


def test_torch_export_without_a_checkpoint_is_the_fresh_network(torch_run):
    import torch

    package, _ = torch_run
    output = package.parent / "fresh.pt2"
    result = run(package, "export.py", "--format", "torch-export", "-o", str(output),
                 "--no-preprocess")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    torch.manual_seed(0)
    model = load_module(package / "model.py", "tiny_torch_model").build_model().eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch.export.load(str(output)).module()(images), model(images))


def test_torch_export_errors_are_one_line(torch_run, tmp_path):
    package, checkpoint = torch_run
    damaged = tmp_path / "damaged.pt"
    raw = bytearray(checkpoint.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # in the tensors' bytes: the digest written in the file sees it
    damaged.write_bytes(bytes(raw))
    output = tmp_path / "out.onnx"
    line = one_line_error(run(package, "export.py", "--checkpoint", str(damaged), "--format",
                              "onnx", "-o", str(output)))  # fmt: skip
    assert "is damaged or cut short" in line and not output.exists()
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    line = one_line_error(run(package, "export.py", "--checkpoint", str(foreign), "--format",
                              "onnx", "-o", str(output)))  # fmt: skip
    assert "is not a checkpoint written by a resdsl trainer" in line
    line = one_line_error(run(package, "export.py", "--format", "onnx",
                              "-o", str(tmp_path / "missing" / "out.onnx")))  # fmt: skip
    assert "is not a directory" in line
    usage = run(package, "export.py", "--format", "tflite", "-o", str(output))
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    help_text = run(package, "export.py", "--help").stdout
    assert "example:" in help_text and "freshly initialised" in help_text


# --- JAX --------------------------------------------------------------------------------------
@pytest.mark.long
def test_stablehlo_export_matches_logits_at_two_batch_sizes(tmp_path):
    """By default the exported function holds data.py's preprocessing with the checkpoint's
    statistics (the training mean image subtracted): it takes images in [0, 1]; with
    --no-preprocess, the network alone."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")

    package = compile_tiny(tmp_path, "jax")
    checkpoint = train_two_iterations(package)
    model = load_module(package / "model.py", "tiny_jax_model")
    data = load_module(package / "data.py", "tiny_jax_data")
    saved = jax_checkpoint(checkpoint)
    variables, statistics = saved["variables"], saved["preprocess"]
    assert statistics["mean"].shape == (16, 16, 3) and np.abs(statistics["mean"]).max() > 0.1
    for preprocess in (True, False):
        output = tmp_path / f"tiny_{preprocess}.jax_exported"
        result = run(package, "export.py", "--checkpoint", str(checkpoint), "--format",
                     "stablehlo", "-o", str(output),
                     *([] if preprocess else ["--no-preprocess"]))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("in [0, 1], preprocessed in the function" in result.stdout) == preprocess
        exported = jax.export.deserialize(bytearray(output.read_bytes()))
        for batch in (1, 4):
            images = jax.random.uniform(jax.random.key(batch), (batch, 16, 16, 3))
            scores = np.asarray(exported.call(images))
            assert scores.shape == (batch, 10)
            network_input = data.preprocess(images, statistics) if preprocess else images
            expected = np.asarray(model.logits(variables, network_input))
            assert np.abs(scores - expected).max() <= 1e-5

    text = tmp_path / "tiny.mlir"
    result = run(package, "export.py", "--format", "stablehlo-text", "-o", str(text))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stablehlo" in text.read_text() and "?x16x16x3xf32" in text.read_text()
    damaged = tmp_path / "damaged.msgpack"
    damaged.write_bytes(checkpoint.read_bytes()[:-5])
    line = one_line_error(run(package, "export.py", "--checkpoint", str(damaged), "--format",
                              "stablehlo", "-o", str(tmp_path / "x")))  # fmt: skip
    assert "is damaged or cut short" in line


def test_export_is_rendered_with_the_trainer_only(tmp_path):
    from resdsl.compile import build_files

    spec_path = tmp_path / "tiny.res"
    spec_path.write_text(TINY)
    with_trainer = load_spec(spec_path)
    spec_path.write_text(TINY.split("train")[0])  # the network alone
    model_only = load_spec(spec_path)
    for backend in ("torch", "jax"):
        assert "export.py" in build_files(*with_trainer, backend=backend)
        assert "export.py" not in build_files(*model_only, backend=backend)


# --- train.py --init-from -----------------------------------------------------------------------
def distinctive_state_dict(package: Path, name: str) -> dict:
    """A state_dict of the package's network with random weights, its fc zero and its bias
    favouring class 0: the first training loss tells that it was the start, and (no gradient
    reaches through a zero fc) the first step changes the other weights by weight decay alone."""
    import torch

    torch.manual_seed(123)
    state = load_module(package / "model.py", name).build_model().state_dict()
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    state["fc.bias"][0] = 10.0
    return state


def test_init_from_starts_from_the_files_weights(torch_run, tmp_path):
    import torch

    package, _ = torch_run
    state = distinctive_state_dict(package, "tiny_torch_model")
    weights = tmp_path / "start.pth"
    torch.save(state, weights)
    out = tmp_path / "run"
    result = run(package, "train.py", "--no-progress", "--out", str(out), "--iterations", "1",
                 "--batch-size", "8", "--eval-images", "20", "--log-every", "1",
                 "--init-from", str(weights))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] > 7  # about 10 on the 9 classes in 10 that are not 0; 2.3 fresh
    decay = 1 - first["lr"] * 1e-4  # paper_cifar's weight decay, the only change
    saved = torch_checkpoint(out / "checkpoint.pt")["model"]
    model = load_module(package / "model.py", "tiny_torch_model").build_model()
    for name, _ in model.named_parameters():
        if not name.startswith("fc."):
            torch.testing.assert_close(saved[name], state[name] * decay, rtol=1e-6, atol=1e-7)


@pytest.mark.long
def test_init_from_with_reinit_head_and_mismatches(torch_run, tmp_path):
    import torch

    package, _ = torch_run
    state = distinctive_state_dict(package, "tiny_torch_model")
    state["fc.weight"], state["fc.bias"] = torch.zeros(5, 32), torch.zeros(5)  # 5 classes
    weights = tmp_path / "five.pth"
    torch.save(state, weights)
    args = ["--no-progress", "--iterations", "1", "--batch-size", "8", "--eval-images", "20",
            "--log-every", "1", "--init-from", str(weights)]  # fmt: skip
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "a"), *args))
    assert "fc.weight is [5, 32], not [10, 32]" in line and "--reinit-head" in line
    out = tmp_path / "b"
    result = run(package, "train.py", "--out", str(out), *args, "--reinit-head")
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] < 5  # a freshly initialised fc: about 2.3
    saved = torch_checkpoint(out / "checkpoint.pt")["model"]
    assert saved["fc.weight"].shape == (10, 32)
    moved = (saved["conv1.weight"] - state["conv1.weight"]).norm()
    assert moved < 0.1 * state["conv1.weight"].norm()  # one step from the file's weights

    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, weights)
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "c"), *args,
                              "--reinit-head"))  # fmt: skip
    assert "missing keys layer1.0.conv1.weight; unexpected keys extra.weight" in line
    usage = run(package, "train.py", "--out", str(tmp_path / "d"), "--resume",
                "--init-from", str(weights))  # fmt: skip
    assert usage.returncode == 2 and "cannot be combined with --resume" in usage.stderr
    assert len(usage.stderr.strip().splitlines()) == 1
    (tmp_path / "text.pth").write_text("not weights")
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "e"), "--no-progress",
                              "--init-from", str(tmp_path / "text.pth")))  # fmt: skip
    assert "is not a file written by torch.save" in line


@pytest.mark.long
def test_jax_init_from_reads_the_same_file_through_from_torch(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    torch = pytest.importorskip("torch")

    torch_package = compile_tiny(tmp_path / "t", "torch")
    package = compile_tiny(tmp_path / "j", "jax")
    state = distinctive_state_dict(torch_package, "tiny_torch_model_for_jax")
    weights = tmp_path / "start.pth"
    torch.save(state, weights)
    args = ["--no-progress", "--iterations", "1", "--batch-size", "8", "--eval-images", "20",
            "--log-every", "1"]  # fmt: skip
    out = tmp_path / "run"
    result = run(package, "train.py", "--out", str(out), *args, "--init-from", str(weights))
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] > 4  # the fc's bias for class 0: 10 on every other label
    sys.path.insert(0, str(package))
    try:
        from_torch = load_module(package / "weights.py", "tiny_jax_weights").from_torch
    finally:
        sys.path.remove(str(package))
    start = from_torch({k: v.numpy() for k, v in state.items()})
    saved = jax_checkpoint(out / "checkpoint.msgpack")["variables"]
    decay = 1 - first["lr"] * 1e-4  # no gradient through a zero fc: weight decay alone
    kernel = ("layer1_0", "conv1", "kernel")
    got, want = saved["params"], start["params"]
    for key in kernel:
        got, want = got[key], want[key]
    np.testing.assert_allclose(got, np.asarray(want) * decay, rtol=1e-5, atol=1e-7)

    state["fc.weight"], state["fc.bias"] = torch.zeros(5, 32), torch.zeros(5)
    torch.save(state, weights)
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "a"), *args,
                              "--init-from", str(weights)))  # fmt: skip
    assert "fc.weight is [5, 32], not [10, 32]" in line and "--reinit-head" in line
    result = run(package, "train.py", "--out", str(tmp_path / "b"), *args,
                 "--init-from", str(weights), "--reinit-head")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    del state["layer1.0.conv1.weight"]
    torch.save(state, weights)
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "c"), *args,
                              "--init-from", str(weights), "--reinit-head"))  # fmt: skip
    assert "missing keys layer1.0.conv1.weight" in line
