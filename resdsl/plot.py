"""Error curves of training runs in the layout of He et al. 2015, Fig. 6.

For each run: the training error (thin line, from the log lines of `metrics.jsonl`) and the test
error (bold line with dots, from its test evaluations) against iterations, one colour per run,
the learning-rate drops marked by dotted vertical lines (grey where every run has them). matplotlib (Agg, no display) is imported
only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from .runs import Run, labels

FORMATS = (".png", ".svg")


class PlotError(Exception):
    pass


def plot_runs(runs: list[Run], output: str | Path, *, title: str | None = None) -> Path:
    """Draw the runs into `output` (.png or .svg); returns its path. Raises `PlotError`."""
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise PlotError(f"{output}: the figure's name must end in .png or .svg")
    drawable = [r for r in runs if r.logs or r.test_curve()]
    if not drawable:
        raise PlotError("none of the runs has a log line or a test evaluation to draw")

    try:
        import matplotlib
    except ModuleNotFoundError:
        raise PlotError(
            "resdsl plot needs matplotlib: pip install 'resdsl[plot]' (make setup installs it)"
        ) from None

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt.rcParams["svg.hashsalt"] = "resdsl"  # the same SVG for the same runs
    plt.rcParams["svg.fonttype"] = "none"  # text as text: smaller, searchable
    figure, axes = plt.subplots(figsize=(7.0, 4.4), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    drops = [set(run.lr_drops()) for run in drawable if run.logs]
    shared = set.intersection(*drops) if len(drops) > 1 else set()  # drawn once, in grey
    top = 0.0
    last = 0
    for index, (run, label) in enumerate(zip(drawable, labels(drawable))):
        colour = colours[index % len(colours)]
        if run.logs:
            xs = [r["iteration"] for r in run.logs]
            ys = [100 * r["train_error"] for r in run.logs]
            axes.plot(xs, ys, color=colour, linewidth=0.9, alpha=0.85)
            top = max(top, max(ys[len(ys) // 10 :]))  # the first tenth may start near 90%
            last = max(last, xs[-1])
        curve = run.test_curve()
        if curve:
            xs, ys = zip(*curve)
            ys = [100 * y for y in ys]
            axes.plot(xs, ys, color=colour, linewidth=2.6, marker="o", markersize=4)
            top = max(top, max(ys))
            last = max(last, xs[-1])
        for drop in run.lr_drops():
            if drop not in shared:
                axes.axvline(drop, color=colour, linestyle=":", linewidth=1.0, alpha=0.7)
        handles.append(Line2D([], [], color=colour, linewidth=2.6, label=label))
    grey = "0.35"
    for drop in sorted(shared):
        axes.axvline(drop, color=grey, linestyle=":", linewidth=1.0)
    handles += [
        Line2D([], [], color=grey, linewidth=0.9, label="training error"),
        Line2D([], [], color=grey, linewidth=2.6, marker="o", markersize=4, label="test error"),
        Line2D([], [], color=grey, linewidth=1.0, linestyle=":", label="learning rate drop"),
    ]
    axes.set_xlim(0, last * 1.02 or 1)
    axes.set_ylim(0, min(100.0, top * 1.15) or 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("iterations")
    axes.set_ylabel("error (%)")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if output.suffix.lower() == ".svg" else {}
    figure.savefig(output, metadata=metadata)
    plt.close(figure)
    return output
