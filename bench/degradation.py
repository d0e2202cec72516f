"""The paper's degradation experiment (Fig. 6) on Fashion-MNIST: plain and residual nets of 20 and
56 layers, trained with the same recipe; the deeper plain net should train worse, the deeper
residual net better.

    python bench/degradation.py                          # the full 64k-iteration recipe (a GPU)
    python bench/degradation.py --iterations 2000 --device cpu --eval-images 2000

Compiles each spec, trains it with the generated train.py (a fresh run in
runs/degradation/NAME), and prints a markdown table: test accuracy, final training error (mean of
the last logged tenth of the run), wall time and ms per iteration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["plain20", "plain56", "resnet20", "resnet56"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="default: the spec's 64,000")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-images", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "degradation")
    parser.add_argument("--nets", nargs="*", default=SPECS, choices=SPECS)
    args = parser.parse_args()
    rows = []
    for name in args.nets:
        package = args.out / f"{name}_torch"
        subprocess.run(
            [sys.executable, "-m", "resdsl.cli", "compile", f"specs/fashion-mnist/{name}.res",
             "--backend", "torch", "-o", str(package), "--force"],
            cwd=ROOT, check=True,
        )  # fmt: skip
        run = args.out / name
        shutil.rmtree(run, ignore_errors=True)  # the bench's own run directory: a fresh run
        command = [sys.executable, str(package / "train.py"), "--out", str(run), "--device",
                   args.device, "--no-progress"]  # fmt: skip
        if args.iterations:
            command += ["--iterations", str(args.iterations)]
        if args.eval_images:
            command += ["--eval-images", str(args.eval_images)]
        subprocess.run(command, check=True)
        final = json.loads((run / "final.json").read_text())
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logs = [r for r in logs if "train_error" in r]
        tail = logs[-max(1, len(logs) // 10) :]
        train_error = sum(r["train_error"] for r in tail) / len(tail)
        ms = 1000 * final["train_s"] / final["iterations"]
        rows.append((name, 1 - final["test_top1_error"], train_error, final["wall_s"], ms))
    print("| net | test accuracy | final training error | wall time | ms/iter |")
    print("|---|---|---|---|---|")
    for name, accuracy, train_error, wall, ms in rows:
        print(f"| {name} | {accuracy:.2%} | {train_error:.2%} | {wall:.0f} s | {ms:.2f} |")


if __name__ == "__main__":
    main()
