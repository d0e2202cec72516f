"""Training-step speed of the generated torchvision ResNet-50 against torchvision's own.

    python bench/torch_vs_torchvision.py                       # CUDA if present, else the CPU
    python bench/torch_vs_torchvision.py --device cpu --batch 16 --rounds 5

Both models get the same weights and run forward + backward + SGD step in the same process,
alternating in rounds (A B, then B A) so that clock and thermal drift hit both alike. On CUDA: bf16 autocast,
channels_last, batch 256 (the setting of the measured anchors in docs/reference.md). On the CPU:
float32, channels_last. Prints a markdown row per model and the ratio generated / torchvision.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from rounds import alternate, print_rates

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def generated_resnet50() -> torch.nn.Module:
    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    out = Path(tempfile.mkdtemp()) / "resnet50_torch"
    spec, analysis = load_spec(ROOT / "specs/torchvision/resnet50.res")
    compile_spec(spec, analysis, backend="torch", output=out)
    module_spec = importlib.util.spec_from_file_location("generated_resnet50", out / "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.build_model()


def make_step(model, device, amp):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, images, labels, steps, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 16)
    steps = args.steps or (20 if cuda else 2)
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    ours = generated_resnet50()
    ours.load_state_dict(reference.state_dict())
    models = {"generated (resdsl)": ours, "torchvision.models.resnet50": reference}
    steps_by_name = {}
    for name, model in models.items():
        model.to(device, memory_format=torch.channels_last).train()
        steps_by_name[name] = make_step(model, device, amp=cuda)
    images = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    runs = {
        name: (lambda n, step=step: timed(step, images, labels, n, device))
        for name, step in steps_by_name.items()
    }
    seconds = alternate(runs, args.rounds, steps, warmup=2 if cuda else 1)

    setting = f"{device.type}, batch {batch}, {'bf16 autocast' if cuda else 'float32'}, " \
              f"channels_last, {args.rounds} rounds x {steps} steps"  # fmt: skip
    print(f"ResNet-50 training step ({setting}; torch {torch.__version__})")
    rate = print_rates(seconds, batch, steps, "model")
    ratio = rate["generated (resdsl)"] / rate["torchvision.models.resnet50"]
    print(f"ratio generated / torchvision (median): {ratio:.3f}")


if __name__ == "__main__":
    main()
