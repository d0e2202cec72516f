"""The paper's degradation experiment (He et al. 2015, Fig. 6) on Fashion-MNIST.

Plain and residual nets of 20 and 56 layers (specs/fashion-mnist/{plain20,plain56,resnet20,
resnet56}.res: option A shortcuts, the paper's CIFAR recipe) are compiled to PyTorch packages and
trained one after the other with the same recipe, seed and batch size by the generated train.py.
The deeper plain net should train worse than the shallower one (the degradation problem), the
deeper residual net better.

Each invocation writes a new directory (default runs/degradation/YYYYmmdd-HHMMSS, UTC) holding
the packages (packages/NAME_torch), one run directory per net (NAME: metrics.jsonl, final.json,
checkpoint.pt), results.md (the table below) and fig6.png (the error curves, drawn by the code
of `resdsl plot`). The table gives, per net, the test accuracy, the final training error (the
mean of the log lines in the last tenth of the run), the wall time and the time per iteration,
and says how many iterations and test images it measured and what the run shows.

With --test-every N the test error is also measured every N iterations, by the trainer itself
(train.py --eval-every N), into metrics.jsonl; without it, at the end only.

Examples (times on a 2-core CPU):

    .venv/bin/python bench/degradation.py                   # the full 64k-iteration recipe: a GPU
    .venv/bin/python bench/degradation.py --device cpu --iterations 1000 --eval-images 10000
        # about 50 minutes: ~0.35 s per iteration for the 20-layer nets, ~0.9 s for the 56-layer
    .venv/bin/python bench/degradation.py --device cpu --iterations 500 --log-every 10 \\
        --test-every 100     # the README's figure (run as two halves there): 40-50 minutes

On a machine shared with other work, set OMP_NUM_THREADS=1 (docs/performance.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resdsl.plot import plot_runs  # noqa: E402
from resdsl.runs import Run, read_run  # noqa: E402

SPECS = ["plain20", "plain56", "resnet20", "resnet56"]
TEST_IMAGES = 10_000  # Fashion-MNIST's test split
TITLES = {"plain20": "plain-20", "plain56": "plain-56", "resnet20": "ResNet-20",
          "resnet56": "ResNet-56"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/degradation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--iterations", type=int, metavar="N", help="training length (default: the spec's 64,000; milestones scale)")  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="global batch (default: the spec's 128)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of every run (default: 0)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when PyTorch sees it")  # fmt: skip
    parser.add_argument("--eval-images", type=int, metavar="N", help=f"test on the first N images only (default: all {TEST_IMAGES:,})")  # fmt: skip
    parser.add_argument("--test-every", type=int, metavar="N", help="also measure the test error every N iterations (see above)")  # fmt: skip
    parser.add_argument("--log-every", type=int, metavar="N", help="iterations per log line (default: the trainer's)")  # fmt: skip
    parser.add_argument("--out", type=Path, metavar="DIR", help="the new directory (default: runs/degradation/YYYYmmdd-HHMMSS)")  # fmt: skip
    parser.add_argument("--nets", nargs="+", default=SPECS, choices=SPECS, metavar="NET", help=f"some of {', '.join(SPECS)} (default: all four)")  # fmt: skip
    return parser.parse_args(argv)


def train(args: argparse.Namespace, package: Path, run: Path) -> None:
    """Train one net with its generated train.py, which measures the test error every
    --test-every iterations itself (its --eval-every)."""
    command = [sys.executable, str(package / "train.py"), "--out", str(run), "--device",
               args.device, "--no-progress", "--seed", str(args.seed),
               "--eval-every", str(args.test_every or 0)]  # fmt: skip
    for flag, value in [("--iterations", args.iterations), ("--batch-size", args.batch_size),
                        ("--eval-images", args.eval_images), ("--log-every", args.log_every)]:  # fmt: skip
        if value:
            command += [flag, str(value)]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed")


def findings(runs: dict[str, Run]) -> list[str]:
    """What the run shows, in words, from the final training errors."""
    err = {name: run.final_train_error() for name, run in runs.items()}
    said = []

    def pct(name: str) -> str:
        return f"{err[name]:.1%}"

    if "plain20" in err and "plain56" in err:
        if err["plain56"] > err["plain20"]:
            said.append(f"The deeper plain net trains worse: plain-56 ends at {pct('plain56')} "
                        f"training error against plain-20's {pct('plain20')} (the degradation "
                        "problem).")  # fmt: skip
        else:
            said.append(f"No degradation in this run: plain-56 ends at {pct('plain56')} training "
                        f"error, plain-20 at {pct('plain20')}.")  # fmt: skip
    if "resnet20" in err and "resnet56" in err:
        if err["resnet56"] < err["resnet20"]:
            said.append(f"The deeper residual net trains better: ResNet-56 {pct('resnet56')} "
                        f"against ResNet-20's {pct('resnet20')}, as in the paper.")  # fmt: skip
        else:
            said.append(f"ResNet-56 ({pct('resnet56')}) does not yet train better than "
                        f"ResNet-20 ({pct('resnet20')}): in the paper's ordering it does, after "
                        "the full schedule; short runs leave the deeper nets further from "
                        "convergence.")  # fmt: skip
    if "plain20" in err and "resnet20" in err:
        said.append(f"At 20 layers: ResNet-20 {pct('resnet20')}, plain-20 {pct('plain20')}.")
    if "plain56" in err and "resnet56" in err:
        word = "lower" if err["resnet56"] < err["plain56"] else "do not lower"
        said.append(f"At 56 layers the shortcuts {word} the training error: {pct('resnet56')} "
                    f"against {pct('plain56')} for the plain net.")  # fmt: skip
    return said


def milestones(name: str, iterations: int) -> list[int]:
    """The iterations after which the trainer divides the learning rate: the spec's milestones,
    scaled to the run's length as train.py scales them."""
    from resdsl.frontend import load_spec

    spec, _ = load_spec(ROOT / "specs" / "fashion-mnist" / f"{name}.res")
    length = spec.train.length.value
    at = getattr(spec.train.schedule, "milestones", ())
    return [max(1, round(m * iterations / length)) for m in at]


def report(args: argparse.Namespace, runs: dict[str, Run]) -> str:
    name, first = next(iter(runs.items()))
    iterations = first.final["iterations"]
    batch = args.batch_size or 128
    images = min(args.eval_images or TEST_IMAGES, TEST_IMAGES)
    tested = "all" if images == TEST_IMAGES else f"the first {images:,} of the"
    drops = " and ".join(f"{d:,}" for d in milestones(name, iterations)) or "no iteration"
    lines = [
        f"Fashion-MNIST, {iterations:,} iterations of batch {batch} (learning rate divided by 10 "
        f"after iteration {drops}), seed {args.seed}, device {args.device}; test accuracy on "
        f"{tested} {TEST_IMAGES:,} test images; final training error: the mean of the log lines "
        "in the last tenth of the run.",
        "",
        "| net | test accuracy | final training error | wall time | ms/iter |",
        "|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        final = run.final
        ms = 1000 * final["train_s"] / final["iterations"]
        lines.append(
            f"| {TITLES[name]} | {1 - final['test_top1_error']:.2%} | "
            f"{run.final_train_error():.2%} | {final['wall_s']:.0f} s | {ms:.0f} |"
        )
    shown = findings(runs) or ["one net alone: compare plain and residual nets of 20 and 56 layers"]
    lines += ["", "What this run shows: " + " ".join(shown)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "runs" / "degradation" / stamp
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; each invocation needs a new directory (--out)")
    out.mkdir(parents=True, exist_ok=True)
    print(f"writing {out}", flush=True)
    runs = {}
    for name in args.nets:
        package = out / "packages" / f"{name}_torch"
        subprocess.run(
            [sys.executable, "-m", "resdsl.cli", "compile", f"specs/fashion-mnist/{name}.res",
             "--backend", "torch", "-o", str(package)],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        train(args, package, out / name)
        runs[name] = read_run(out / name)
    text = report(args, runs)
    (out / "results.md").write_text(text)
    figure = plot_runs(
        list(runs.values()), out / "fig6.png",
        title=f"Fashion-MNIST, {runs[args.nets[0]].final['iterations']:,} iterations",
    )  # fmt: skip
    print()
    print(text)
    print(f"wrote {out / 'results.md'} and {figure} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
