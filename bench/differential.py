"""Thousands of random definitions through the compiler, both backends compared (the
differential test of tests/test_compiler.py at scale).

    .venv/bin/python bench/differential.py [--count 400] [--seed 1]   # about 20 minutes on 2 cores

Each generated spec (tests/differential.py) holds gates used as layers, three to five blocks,
maybe a stem and shortcuts, and a network with a stage per block. Each must end in located errors,
or in two packages that count what `summary` counts and give the same logits from the same weights
(in training mode too, for networks without random layers). Prints a table: specs, definitions,
outcomes, the slowest spec and the time in all (docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.differential import specs, verify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="specs (default 400)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    outcomes: collections.Counter[str] = collections.Counter()
    definitions, slowest, start = 0, (0.0, -1), time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        for index, spec in enumerate(specs(args.count, args.seed)):
            definitions += spec.definitions
            began = time.perf_counter()
            try:
                outcomes[verify(spec, directory, index).outcome] += 1
            except Exception:  # a disagreement: print the spec, it becomes a regression test
                outcomes["different"] += 1
                print(f"--- spec {index} (seed {args.seed})\n{spec.text}", file=sys.stderr)
                traceback.print_exc()
            slowest = max(slowest, (time.perf_counter() - began, index))
    total = time.perf_counter() - start
    print("| specs | definitions | equal | refused (located) | different | slowest spec | total |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.count} | {definitions:,} | {outcomes['equal']} | {outcomes['refused']} | "
          f"{outcomes['different']} | {slowest[0]:.1f} s (#{slowest[1]}) | {total:.0f} s |")  # fmt: skip
    sys.exit(1 if outcomes["different"] else 0)


if __name__ == "__main__":
    main()
