"""Ten thousand hostile and broken specs through `resdsl check`'s front end, in one process.

    .venv/bin/python bench/fuzz.py [--count 10000] [--seed 1]     # about 5 minutes on 2 cores

Mutations of the library's specs (tests/fuzzing.py): token deletions, swaps and duplications,
hostile numbers, deep expressions, exponential parameters, unicode, NUL, BOM and line endings,
very long lines, many broken lines, bytes that are not UTF-8, truncation, hostile `extends`
targets. Prints a table: internal errors, unlocated errors, the slowest input and the peak memory
of the process (docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzzing import inputs, prepare, run_one  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="the mutations' seed (default 1)")
    args = parser.parse_args()
    kinds: collections.Counter[str] = collections.Counter()
    unlocated = 0
    slowest = (0.0, "")
    problems = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        prepare(directory)
        for name, data in inputs(args.seed, args.count):
            path = directory / name
            path.write_bytes(data)
            outcome = run_one(path)
            path.unlink()
            kinds[outcome.kind] += 1
            unlocated += outcome.unlocated > 0
            slowest = max(slowest, (outcome.seconds, name))
            if outcome.kind == "internal" or outcome.unlocated:
                problems.append(f"{name}: {outcome.kind} {outcome.detail}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| inputs | valid | located errors | internal errors | unlocated errors "
          "| slowest input | peak memory | total |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.count:,} | {kinds['ok']:,} | {kinds['errors']:,} | {kinds['internal']} "
        f"| {unlocated} | {slowest[0]:.2f} s ({slowest[1]}) | {peak_mb:.0f} MB "
        f"| {time.perf_counter() - start:.0f} s |"
    )
    for line in problems[:20]:
        print(line)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
