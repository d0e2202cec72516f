"""Training runs as the generated trainers leave them: `metrics.jsonl` and `final.json`.

A run directory may be finished (it has `final.json`), still going or stopped (log lines, no
`final.json` yet), or empty; a last log line cut short by a stop is skipped. Nothing here imports
more than the standard library: `resdsl runs` and `resdsl plot` read runs on any machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    path: Path
    logs: list[dict] = field(default_factory=list)  # the log lines: iteration, lr, train_error...
    evals: list[dict] = field(default_factory=list)  # the evaluations: split, protocol, top1_error
    final: dict | None = None
    problems: list[str] = field(default_factory=list)  # what could not be read, in words

    @property
    def spec(self) -> str | None:
        """The spec's path as the trainer recorded it (in `final.json`), if known."""
        spec = (self.final or {}).get("spec")
        return spec if isinstance(spec, str) else None

    @property
    def recipe(self) -> str | None:
        """The library recipe its spec builds on (`final.json`), if any and known."""
        recipe = (self.final or {}).get("recipe")
        return recipe if isinstance(recipe, str) else None

    @property
    def backend(self) -> str | None:
        """The trainer's framework, torch or jax (`final.json`), if known."""
        backend = (self.final or {}).get("backend")
        return backend if isinstance(backend, str) else None

    @property
    def name(self) -> str:
        """The spec's name (its file name without `.res`), else the run directory's name."""
        return Path(self.spec).stem if self.spec else self.path.name

    @property
    def status(self) -> str:
        if not self.path.is_dir():
            return "no such directory"
        if self.final is not None:
            return "finished"
        if self.logs:
            return f"no final.json: running or stopped at iteration {self.logs[-1]['iteration']:,}"
        return "no metrics yet"

    @property
    def iterations(self) -> int | None:
        """The run's length when finished, else the last logged iteration."""
        if self.final is not None and isinstance(self.final.get("iterations"), int):
            return self.final["iterations"]
        return self.logs[-1]["iteration"] if self.logs else None

    def test_curve(self) -> list[tuple[int, float]]:
        """(iteration, top-1 test error) of each test evaluation, by the first protocol seen."""
        tests = [e for e in self.evals if e.get("split") == "test"]
        if not tests:
            return []
        protocol = tests[0].get("protocol")
        points = {e["iteration"]: e["top1_error"] for e in tests if e.get("protocol") == protocol}
        return sorted(points.items())

    def lr_drops(self) -> list[int]:
        """The iterations after which the logged learning rate went down (milestones, plateaus).

        A log line carries the rate of its interval's last iteration, so a drop shows between two
        lines; it is placed at the earlier one, which is the milestone when the two coincide. A
        rate that changes all the time (cosine, piecewise-linear: more than 10 rates logged) has no
        drops to mark."""
        if len({r["lr"] for r in self.logs}) > 10:
            return []
        drops = []
        for before, after in zip(self.logs, self.logs[1:]):
            if after["lr"] < before["lr"] * (1 - 1e-9):
                drops.append(before["iteration"])
        return drops

    def final_train_error(self) -> float | None:
        """The mean training error of the log lines in the last tenth of the logged iterations."""
        if not self.logs:
            return None
        last = self.logs[-1]["iteration"]
        tail = [r["train_error"] for r in self.logs if r["iteration"] > 0.9 * last]
        return sum(tail) / len(tail) if tail else self.logs[-1]["train_error"]

    def summary(self) -> dict:
        """One row of `resdsl runs`: the numbers of the run, None where it has none (yet)."""
        final = self.final or {}
        throughput = final.get("images_per_s")
        if throughput is None and self.logs:  # a run still going: the mean of its log lines
            rates = [r["images_per_s"] for r in self.logs if "images_per_s" in r]
            throughput = sum(rates) / len(rates) if rates else None
        return {
            "run": self.path.as_posix(),
            "spec": self.spec,
            "recipe": self.recipe,
            "backend": self.backend,
            "name": self.name,
            "status": self.status,
            "iterations": self.iterations,
            "final_train_error": self.final_train_error(),
            "test_top1_error": _number(final.get("test_top1_error")),
            "test_top5_error": _number(final.get("test_top5_error")),
            "images_per_s": _number(throughput),
            "wall_s": _number(final.get("wall_s")),
            "problems": self.problems,
        }


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def read_run(path: str | Path) -> Run:
    """Everything readable in a run directory; problems are noted, never raised."""
    run = Run(Path(path))
    if not run.path.is_dir():
        run.problems.append("no such directory")
        return run
    metrics = run.path / "metrics.jsonl"
    if metrics.exists():
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                iteration = record["iteration"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if number < len(lines):  # the last line may be cut short by a stop: no problem
                    run.problems.append(f"metrics.jsonl line {number} is not a log record")
                continue
            if not isinstance(iteration, int):
                run.problems.append(f"metrics.jsonl line {number} has no integer iteration")
            elif "split" in record and _number(record.get("top1_error")) is not None:
                run.evals.append(record)
            elif _number(record.get("train_error")) is not None and "lr" in record:
                run.logs.append(record)
    final = run.path / "final.json"
    if final.exists():
        try:
            data = json.loads(final.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            run.problems.append("final.json is not JSON")
        else:
            if isinstance(data, dict):
                run.final = data
            else:
                run.problems.append("final.json is not a JSON object")
    if not metrics.exists() and not final.exists():
        run.problems.append("no metrics.jsonl or final.json (not a run directory?)")
    run.logs.sort(key=lambda r: r["iteration"])
    run.evals.sort(key=lambda r: r["iteration"])
    return run


def labels(runs: list[Run]) -> list[str]:
    """The legend's names: the spec names, with the run directory where two runs share one."""
    names = [r.name for r in runs]
    return [
        f"{name} ({run.path.as_posix()})" if names.count(name) > 1 else name
        for name, run in zip(names, runs)
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def table(runs: list[Run]) -> str:
    """The runs side by side, as aligned columns, and a line for each problem met."""
    header = ("run", "spec", "recipe", "backend", "iterations", "train err", "test top-1",
              "test top-5", "img/s", "wall time", "status")  # fmt: skip
    rows = [header]
    notes = []
    for run in runs:
        s = run.summary()
        rows.append((
            s["run"],
            s["spec"] or "?",
            s["recipe"] or "-",
            s["backend"] or "?",
            "-" if s["iterations"] is None else f"{s['iterations']:,}",
            _percent(s["final_train_error"]),
            _percent(s["test_top1_error"]),
            _percent(s["test_top5_error"]),
            "-" if s["images_per_s"] is None else f"{s['images_per_s']:,.0f}",
            _duration(s["wall_s"]),
            s["status"],
        ))  # fmt: skip
        notes += [f"{s['run']}: {problem}" for problem in s["problems"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = (False, False, False, False, True, True, True, True, True, True, False)
    lines = [
        "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, right)).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(
        "train err: mean training error of the log lines in the last tenth of the run; "
        "test: the spec's first evaluation protocol"
    )
    return "\n".join(lines + notes)
