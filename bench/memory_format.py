"""The PyTorch trainer's memory format on the CPU: contiguous against channels_last.

The generated train.py keeps tensors contiguous on CPUs that torch runs with its AVX-512 kernels
(torch 2.14.1 corrupts memory in the channels_last backward pass of strided 1x1 convolutions on
Intel CPUs with AVX-512) and uses channels_last elsewhere. This times the training step of the
Fashion-MNIST ResNet-20 package (specs/fashion-mnist/resnet20.res: the paper's recipe, option A
shortcuts, so no strided 1x1 convolution) in both formats, alternating them round by round, and
prints the CPU, torch's capability and the images per second of each.

    .venv/bin/python bench/memory_format.py --rounds 10 --steps 5     # about a minute, 2 cores
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import alternate, print_rates  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/memory_format.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    directory = Path(tempfile.mkdtemp())
    spec, analysis = load_spec(ROOT / "specs/fashion-mnist/resnet20.res")
    compile_spec(spec, analysis, backend="torch", output=directory / "pkg")
    sys.path.insert(0, str(directory / "pkg"))
    import model as generated

    torch.manual_seed(0)
    images = torch.randn(args.batch, 1, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))

    def runner(memory_format):
        net = generated.build_model().to(memory_format=memory_format)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        x = images.contiguous(memory_format=memory_format)

        def run(steps: int) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), labels).backward()
                optimizer.step()
            return time.perf_counter() - start

        return run

    runs = {"contiguous": runner(torch.contiguous_format),
            "channels_last": runner(torch.channels_last)}  # fmt: skip
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads\n")  # fmt: skip
    seconds = alternate(runs, args.rounds, args.steps, warmup=2)
    rate = print_rates(seconds, args.batch, args.steps,
                       f"ResNet-20 training step (CPU, batch {args.batch}, {args.rounds} rounds x "
                       f"{args.steps} steps)")  # fmt: skip
    print(f"\nchannels_last / contiguous: {rate['channels_last'] / rate['contiguous']:.2f}")


if __name__ == "__main__":
    main()
