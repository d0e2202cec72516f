"""Wall time of `resdsl summary specs/resnet152.res` as a whole process, beside its floors.

    python bench/summary_time.py [--runs 30]

Prints a markdown table (median and best of N runs) for: the bare interpreter, importing the four
libraries of the compile path, a one-command typer program, and resdsl itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_TYPER = """
import typer
from pathlib import Path
app = typer.Typer()
@app.command()
def show(path: Path):
    print(path)
@app.command()
def other(path: Path):
    print(path)
app()
"""


def timed(command: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(MINIMAL_TYPER)
    py = sys.executable
    resdsl = str(Path(py).with_name("resdsl"))
    rows = [
        ("python -c pass", [py, "-c", "pass"]),
        (
            "import lark, jinja2, pydantic, typer",
            [py, "-c", "import lark, jinja2, pydantic, typer"],
        ),
        ("a one-command typer program", [py, script.name, "show", "x"]),
        ("resdsl summary specs/resnet152.res", [resdsl, "summary", "specs/resnet152.res"]),
        ("resdsl check specs/resnet152.res", [resdsl, "check", "specs/resnet152.res"]),
    ]
    timed(rows[-2][1], 3)  # warm the file cache and the parser cache
    print(f"| command | median (s) | best (s) |  ({args.runs} runs each)")
    print("|---|---|---|")
    for name, command in rows:
        median, best = timed(command, args.runs)
        print(f"| `{name}` | {median:.3f} | {best:.3f} |")
    Path(script.name).unlink()


if __name__ == "__main__":
    main()
