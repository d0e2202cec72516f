"""Timing shared by the speed benches: runs alternated in rounds, and their rates as a table."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def alternate(
    runs: dict[str, Callable[[int], float]], rounds: int, steps: int, warmup: int
) -> dict[str, list[float]]:
    """The seconds each run takes for `steps` steps, round after round; the order reverses every
    other round (A B, then B A) so that clock and thermal drift hit every run alike. `warmup`
    untimed steps first (autotuning, allocators, first-call overheads)."""
    for run in runs.values():
        run(warmup)
    seconds = {name: [] for name in runs}
    for round_ in range(rounds):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
            seconds[name].append(runs[name](steps))
    return seconds


def print_rates(seconds: dict[str, list[float]], batch: int, steps: int, what: str) -> dict:
    """Print a markdown table of images per second (median and best round); the medians."""
    print(f"| {what} | median img/s | best img/s |")
    print("|---|---|---|")
    rate = {}
    for name, samples in seconds.items():
        per_step = [s / steps for s in samples]
        rate[name] = batch / statistics.median(per_step)
        print(f"| {name} | {rate[name]:,.1f} | {batch / min(per_step):,.1f} |")
    return rate
