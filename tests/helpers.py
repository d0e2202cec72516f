"""Shared test helpers: run the CLI in-process, find the repository's files."""

from __future__ import annotations

import importlib.util
import json
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def library_specs() -> list[str]:
    """The spec library as the repository holds it: the .res files under specs/ that git tracks
    (what a user adds there, following the README's tutorial, is not the tests' business); every
    .res file under specs/ outside a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "specs"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "specs").rglob("*.res"))
    return sorted(p for p in listed.split("\0") if p.endswith(".res"))


SPECS = library_specs()


def _load_runtime():
    """templates/common/runtime.py, the module every generated trainer holds a copy of."""
    spec = importlib.util.spec_from_file_location(
        "trainer_runtime", ROOT / "templates/common/runtime.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runtime = _load_runtime()


def torch_checkpoint(path: Path) -> dict:
    """A PyTorch trainer's checkpoint as torch.load reads it (its defaults: weights_only), its
    digest verified, without its `resdsl` entry."""
    import torch

    def tensor_bytes(value):
        if not isinstance(value, torch.Tensor):
            return None
        flat = value.detach().cpu().contiguous().reshape(-1)
        return (
            f"{flat.dtype}{tuple(value.shape)}".encode() + flat.view(torch.uint8).numpy().tobytes()
        )

    return runtime.open_checkpoint(path, None, "torch", torch.load, tensor_bytes)


def jax_checkpoint(path: Path) -> dict:
    """A JAX trainer's checkpoint as Flax's msgpack_restore reads it, its digest verified,
    without its `resdsl` entry."""
    import numpy as np
    from flax import serialization

    def array_bytes(value):
        if not isinstance(value, np.ndarray | np.generic):
            return None
        value = np.ascontiguousarray(value)
        return f"{value.dtype}{value.shape}".encode() + value.tobytes()

    return runtime.open_checkpoint(
        path,
        None,
        "jax",
        lambda p: serialization.msgpack_restore(Path(p).read_bytes()),
        array_bytes,
    )


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`resdsl ARGS` in this process: (exit code, stdout, stderr)."""
    from resdsl.cli import main

    argv = sys.argv
    sys.argv = ["resdsl", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kill_at_checkpoint(
    process: subprocess.Popen, iteration_of: Callable[[], int], at_least: int, timeout: float = 300
) -> int:
    """SIGKILL a training run once its checkpoint (read by `iteration_of`) has reached
    `at_least` iterations; returns the iteration of the checkpoint it leaves behind."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.01)
        try:
            iteration = iteration_of()
        except (
            FileNotFoundError,
            EOFError,
            RuntimeError,
            pickle.UnpicklingError,
            runtime.RunError,
        ):
            continue  # not written yet
        if iteration >= at_least:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return iteration
    raise AssertionError("the run never reached the checkpoint to be killed at")


def last_logged(run: Path) -> int:
    """The iteration of a running training's last complete line in metrics.jsonl (0: none)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["iteration"]
        except ValueError:  # being written
            continue
    return 0


def logged(run: Path) -> list[dict]:
    """metrics.jsonl without the throughput, which differs from run to run."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]
