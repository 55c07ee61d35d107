"""How a cost grows with sequence length: fitted power-law exponents, the length from which a
variant beats a baseline, and log-log figures. Pure functions of measured numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from attn_lightning.analysis.plots import new_figure

MIN_POINTS_FOR_UPPER_HALF = 4  # below this, every point is needed for a slope at all


def fit_points(lengths: Sequence[int], values: Sequence[float]) -> list[tuple[int, float]]:
    """The (length, value) pairs an exponent is fitted on: finite positive values, and of
    those the upper half by length (fixed per-call overheads flatten the short end) when
    there are at least 4; the upper half includes the middle point of an odd count."""
    points = sorted(
        (n, v) for n, v in zip(lengths, values, strict=True) if math.isfinite(v) and v > 0
    )
    if len(points) >= MIN_POINTS_FOR_UPPER_HALF:
        points = points[len(points) // 2 :]
    return points


def scaling_exponent(lengths: Sequence[int], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(length) over `fit_points`: value ~ c *
    length^slope. None with fewer than two usable points."""
    points = fit_points(lengths, values)
    if len({n for n, _ in points}) < 2:
        return None
    x = np.log([n for n, _ in points])
    y = np.log([v for _, v in points])
    slope, _ = np.polyfit(x, y, 1)
    return float(slope)


def crossover_length(
    lengths: Sequence[int],
    times: Sequence[float | None],
    baseline: Sequence[float | None],
) -> int | None:
    """The first length from which `times` stays below `baseline` (None: not at the longest).

    A None time means the run did not finish (timeout, out of memory, skipped, error): a
    variant that finishes where the baseline does not counts as faster there, the reverse as
    slower; lengths where neither finished say nothing and are left out."""
    faster: list[tuple[int, bool]] = []
    for n, t, b in sorted(zip(lengths, times, baseline, strict=True)):
        if t is None and b is None:
            continue
        faster.append((n, t is not None and (b is None or t < b)))
    crossover = None
    for n, is_faster in reversed(faster):
        if not is_faster:
            break
        crossover = n
    return crossover


def scaling_figure(
    series: Mapping[str, tuple[Sequence[int], Sequence[float]]], ylabel: str, title: str
) -> Figure:
    """Log-log lines of value against sequence length, one per named series (points that
    are missing or non-positive are left out rather than drawn as zero)."""
    fig = new_figure(7.0, 4.5)
    ax = fig.subplots()
    all_lengths: set[int] = set()
    for name, (lengths, values) in series.items():
        points = [
            (n, v) for n, v in zip(lengths, values, strict=True) if math.isfinite(v) and v > 0
        ]
        if not points:
            continue
        all_lengths.update(n for n, _ in points)
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if all_lengths:
        ticks = sorted(all_lengths)
        ax.set_xticks(ticks, [str(n) for n in ticks], fontsize=7)
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax.xaxis.set_minor_locator(NullLocator())  # the lengths themselves label the x axis
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    return fig
