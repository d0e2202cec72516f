"""Training throughput of the generated JAX trainer's step on ResNet-50, beside the PyTorch one.

    python bench/jax_resnet50.py                                   # a GPU if JAX sees one, else the CPU
    python bench/jax_resnet50.py --device cpu --batch 8 --rounds 5 --steps 2
    python bench/jax_resnet50.py --no-torch                        # the JAX step alone

The JAX package of specs/torchvision/resnet50.res is generated into a temporary directory, and its
own `train_step` (forward, backward, SGD update: the step that train.py runs) is timed under
jax.jit on every device, the batch sharded over them, on random NHWC images. On a GPU: bf16 (the
trainer's --amp: weights and images cast inside the step), batch 256. On the CPU: float32.

With --torch (the default), the PyTorch package of the same spec runs its training step in the
same process at the same setting (bf16 autocast on CUDA, float32 on the CPU, channels_last, SGD
with the same hyperparameters), alternating with JAX in rounds (A B, then B A) so that clock and
thermal drift hit both alike. Prints a markdown row per backend, the JAX step's compile time and
the ratio JAX / PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

# JAX would otherwise take 75% of the GPU's memory at start, leaving too little for PyTorch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import numpy as np
from rounds import alternate, print_rates

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "specs/torchvision/resnet50.res"
JAX_NAME, TORCH_NAME = "JAX (generated train_step)", "PyTorch (generated model, eager)"


def generated(backend: str) -> Path:
    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    out = Path(tempfile.mkdtemp()) / f"resnet50_{backend}"
    spec, analysis = load_spec(SPEC)
    compile_spec(spec, analysis, backend=backend, output=out)
    return out


def import_package(directory: Path) -> dict:
    """The package's modules as its train.py imports them (data, model, train beside each other)."""
    sys.path.insert(0, str(directory))
    try:
        modules = {name: importlib.import_module(name) for name in ("data", "model", "train")}
    finally:
        sys.path.remove(str(directory))
        for name in ("data", "model", "train"):
            sys.modules.pop(name, None)
    return modules


def jax_step(batch: int, amp: bool):
    """(step, compile seconds): the generated train_step, compiled, on a fixed random batch."""
    package = import_package(generated("jax"))
    train, data = package["train"], package["data"]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    variables = jax.jit(package["model"].init_variables, static_argnums=0)(0)
    state = data.replicate({**variables, "opt_state": train.sgd().init(variables["params"])}, mesh)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.normal(size=(batch, 224, 224, 3)).astype(np.float32), sharded)
    labels = jax.device_put(rng.integers(0, 1000, batch).astype(np.int32), sharded)
    lr = np.float32(0.1)
    step = jax.jit(partial(train.train_step, amp=amp), donate_argnums=0,
                   out_shardings=(replicated, replicated))  # fmt: skip
    start = time.perf_counter()
    compiled = step.lower(state, images, labels, lr).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            holder["state"], metrics = compiled(holder["state"], images, labels, lr)
        metrics.block_until_ready()
        return time.perf_counter() - start

    return run, compile_s


def torch_step(batch: int, cuda: bool):
    import torch

    package = import_package(generated("torch"))
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = package["model"].build_model().to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 1000, (batch,), device=device)

    def run(steps: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--batch", type=int, default=None, help="global batch (default: 256 on a GPU, 8 on the CPU)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per round (default: 20 on a GPU, 2 on the CPU)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.device != "auto":
        jax.config.update("jax_platforms", args.device)
    gpu = jax.devices()[0].platform == "gpu"
    batch = args.batch or (256 if gpu else 8)
    steps = args.steps or (20 if gpu else 2)

    run_jax, compile_s = jax_step(batch, amp=gpu)
    runs = {JAX_NAME: run_jax}
    if args.torch:
        runs[TORCH_NAME] = torch_step(batch, cuda=gpu)
    seconds = alternate(runs, args.rounds, steps, warmup=2 if gpu else 1)

    devices = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    setting = f"{devices}, batch {batch}, {'bf16' if gpu else 'float32'}, {args.rounds} rounds x {steps} steps"
    print(f"ResNet-50 training step ({setting}; jax {jax.__version__})")
    rate = print_rates(seconds, batch, steps, "backend")
    print(f"JAX step compile time: {compile_s:.1f} s")
    if args.torch:
        print(f"ratio JAX / PyTorch (median): {rate[JAX_NAME] / rate[TORCH_NAME]:.3f}")


if __name__ == "__main__":
    main()
