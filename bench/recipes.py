"""The fast recipe against the paper's at the same wall-clock budget, on Fashion-MNIST.

specs/fashion-mnist/resnet20.res (the paper's CIFAR recipe: batch 128, lr 0.1 divided by 10 at
1/2 and 3/4 of training) and specs/fashion-mnist/resnet20_fast.res (fast_cifar: batch 512,
piecewise-linear lr, Nesterov momentum, label smoothing, reflect padding, flip averaging) are
compiled to PyTorch packages and trained by the generated train.py with the same seed. Each is
given the same budget of wall-clock time: a short calibration run measures its seconds per
iteration, and the run is then as many iterations as fit in the budget, its schedule scaled to
that length (`--iterations`), so that each recipe's schedule ends within the budget. Both are
evaluated on all 10,000 test images, each by its spec's protocol (single view; flip average).

Writes runs/recipes/YYYYmmdd-HHMMSS/ (or --out): the packages, one run directory per recipe and
results.md with the table. A recipe whose run in --out has finished is read, not run again. Example, on the 2-core CPU (about 25 minutes in all):

    .venv/bin/python bench/recipes.py --budget-s 600

On a machine shared with other work the budget buys fewer iterations; set OMP_NUM_THREADS to the
cores the runs may use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPECS = {
    "paper_cifar": "specs/fashion-mnist/resnet20.res",
    "fast_cifar": "specs/fashion-mnist/resnet20_fast.res",
}
CALIBRATION = 12  # iterations timed before each run (the first two are not counted)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/recipes.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="training time of each recipe, seconds (default: %(default)s)")  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the results' directory (default: a new one)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(SPECS), default=list(SPECS),
                        help="the recipes to run (default: both)")  # fmt: skip
    return parser.parse_args(argv)


def train(package: Path, out: Path, *args: str) -> None:
    command = [sys.executable, str(package / "train.py"), "--no-progress", "--out", str(out), *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def seconds_per_iteration(package: Path, directory: Path, args: argparse.Namespace) -> float:
    """From a short run's log: the mean time of an iteration after the first two."""
    out = directory / "calibration"
    train(package, out, "--iterations", str(CALIBRATION), "--log-every", "1", "--eval-images",
          "10", "--device", args.device, "--seed", str(args.seed))  # fmt: skip
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in logs if "images_per_s" in r][2:]
    return sum(batch_size(package) / r for r in rates) / len(rates)


def batch_size(package: Path) -> int:
    """The spec's batch, as the package's train.py says it (`BATCH_SIZE = N`)."""
    for line in (package / "train.py").read_text().splitlines():
        if line.startswith("BATCH_SIZE ="):
            return int(line.split("=")[1].split("#")[0])
    raise ValueError(f"{package}/train.py has no BATCH_SIZE")


def main(argv: list[str] | None = None) -> None:
    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    args = parse_args(argv)
    out = args.out or ROOT / "runs" / "recipes" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipes:
        spec_path = SPECS[recipe]
        run = out / recipe / "run"
        if not (run / "final.json").exists():
            spec, analysis = load_spec(ROOT / spec_path)
            package = out / "packages" / f"{recipe}_torch"
            compile_spec(spec, analysis, backend="torch", output=package, force=True)
            per_iteration = seconds_per_iteration(package, out / recipe, args)
            iterations = max(1, int(args.budget_s / per_iteration))
            print(f"{recipe}: {per_iteration:.3f} s per iteration -> {iterations} iterations",
                  flush=True)  # fmt: skip
            started = time.perf_counter()
            train(package, run, "--iterations", str(iterations), "--device", args.device,
                  "--seed", str(args.seed), "--eval-images", "10000", "--log-every", "50")  # fmt: skip
            (out / recipe / "wall.json").write_text(json.dumps(time.perf_counter() - started))
        wall_file = out / recipe / "wall.json"
        wall = json.loads(wall_file.read_text()) if wall_file.exists() else None
        final = json.loads((run / "final.json").read_text())
        protocol = next(iter(final["results"]["test"]))
        rows.append((recipe, spec_path, final["iterations"], final["train_s"], wall,
                     1 - final["test_top1_error"], protocol))  # fmt: skip
        print(f"{recipe}: {1 - final['test_top1_error']:.2%} test accuracy", flush=True)
    lines = [
        f"Fashion-MNIST, ResNet-20, a budget of {args.budget_s:.0f} s of training each, seed "
        f"{args.seed}, {args.device}; all 10,000 test images.",
        "",
        "| recipe | spec | iterations | training time | wall time | test accuracy | protocol |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, spec_path, iterations, train_s, wall, accuracy, protocol in rows:
        shown = "not recorded" if wall is None else f"{wall:.0f} s"
        lines.append(f"| `{recipe}` | `{spec_path}` | {iterations:,} | {train_s:.0f} s | "
                     f"{shown} | {accuracy:.2%} | {protocol} |")  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.md")


if __name__ == "__main__":
    main()
