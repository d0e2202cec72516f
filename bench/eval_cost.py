"""What the test curve costs: train.py's `--eval-every` against none, on Fashion-MNIST.

specs/fashion-mnist/resnet20.res is compiled to a PyTorch package and trained twice for the same
iterations with the same seed: once evaluating the test set only at the end (`--eval-every 0`),
once also every tenth of the run (the default), each evaluation on all 10,000 test images. The
difference of the two wall times, divided by the evaluations the second run adds, is the cost of
one evaluation; the table sets it beside the time of a training iteration.

    .venv/bin/python bench/eval_cost.py                 # about 4 minutes on the 2-core CPU

Writes runs/eval_cost/YYYYmmdd-HHMMSS/ (or --out): the package, the two runs and results.md.
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

SPEC = "specs/fashion-mnist/resnet20.res"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/eval_cost.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--eval-images", type=int, default=10000)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, help="the results' directory (default: a new one)")
    return parser.parse_args(argv)


def run(package: Path, out: Path, eval_every: int, args: argparse.Namespace) -> tuple[float, int]:
    """Wall seconds of a whole train.py run, and the test evaluations it wrote."""
    command = [sys.executable, str(package / "train.py"), "--no-progress", "--out", str(out),
               "--iterations", str(args.iterations), "--eval-every", str(eval_every),
               "--eval-images", str(args.eval_images), "--device", args.device, "--seed", "0",
               "--log-every", "10"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, sum(1 for r in records if r.get("split") == "test")


def main(argv: list[str] | None = None) -> None:
    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    args = parse_args(argv)
    out = args.out or ROOT / "runs" / "eval_cost" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    spec, analysis = load_spec(ROOT / SPEC)
    package = out / "package"
    compile_spec(spec, analysis, backend="torch", output=package, force=True)
    every = args.iterations // 10
    plain_wall, plain_evals = run(package, out / "end_only", 0, args)
    curve_wall, curve_evals = run(package, out / "curve", every, args)
    final = json.loads((out / "end_only" / "final.json").read_text())
    per_iteration = final["train_s"] / final["iterations"]
    per_eval = (curve_wall - plain_wall) / (curve_evals - plain_evals)
    lines = [
        f"`{SPEC}`, PyTorch package, {args.iterations} iterations of batch 128, {args.device}; "
        f"each evaluation on {args.eval_images:,} test images.",
        "",
        "| run | test evaluations | wall time |",
        "|---|---|---|",
        f"| `--eval-every 0` (at the end only) | {plain_evals} | {plain_wall:.1f} s |",
        f"| `--eval-every {every}` (a tenth of the run, the default) | {curve_evals} | "
        f"{curve_wall:.1f} s |",
        "",
        f"One evaluation: {per_eval:.2f} s, the time of {per_eval / per_iteration:.1f} training "
        f"iterations ({per_iteration * 1000:.0f} ms each). Ten evaluations add "
        f"{10 * per_eval / final['train_s']:.0%} to this "
        f"run's {final['train_s']:.0f} s of training; to a run of N iterations, "
        f"10 x {per_eval:.2f} s / (N x {per_iteration:.3f} s).",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.md")


if __name__ == "__main__":
    main()
