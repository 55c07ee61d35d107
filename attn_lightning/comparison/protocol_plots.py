"""Figures of the comparison protocol: one line, point or curve per arm, with its spread over
seeds drawn as the 95% Student t interval (the table's interval, comparison/student_t.py).

Like plots.py, every function returns a figure even without data (a note says
what is missing), so the sweep dir always has the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from attn_lightning.analysis.plots import new_figure, note_figure
from attn_lightning.comparison.student_t import MeanInterval, mean_interval

Series = Sequence[tuple[int, float]]


def seed_band(seeds: Sequence[Series]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, low, high) over the seeds at the steps every seed logged; low = high =
    mean where there is one seed (no band)."""
    present = [dict(s) for s in seeds if s]
    if not present:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(s) for s in present)))
    mean, low, high = [], [], []
    for step in steps:
        s = mean_interval([values[step] for values in present])
        mean.append(s.mean)
        low.append(s.low if s.low is not None else s.mean)
        high.append(s.high if s.high is not None else s.mean)
    return steps, mean, low, high


def arm_loss_curves(curves: Mapping[str, Sequence[Series]]) -> Figure:
    """Validation loss against step per arm: the mean over its seeds, a band of the 95%
    t-interval (none for one seed), at the steps all its seeds logged."""
    title = "Validation loss per arm: mean over seeds, band = 95% t-interval"
    if not any(any(s) for s in curves.values()):
        return note_figure(title, "No run logged val/loss (csv/metrics.csv).")
    fig = new_figure(8.0, 4.8)
    ax = fig.subplots()
    for label, seeds in curves.items():
        steps, mean, low, high = seed_band(seeds)
        if not steps:
            continue
        n = sum(1 for s in seeds if s)
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{label} (n={n})")
        if n > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("val/loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _error(s: MeanInterval | None) -> tuple[float, float]:
    """(mean, half width) for errorbar(); NaN mean: no value, 0 width: no interval."""
    if s is None:
        return math.nan, 0.0
    return s.mean, s.half_width or 0.0


def arm_final_losses(finals: Mapping[str, Mapping[str, MeanInterval | None]]) -> Figure:
    """Final val and test loss per arm: the mean over seeds as a point with the 95%
    t-interval as error bars (none for one seed). Points, not bars from zero: the arms differ
    by hundredths of a nat, which bars from zero would hide, and their intervals with them."""
    title = "Final loss per arm: mean over seeds, error bars = 95% t-interval"
    labels = list(finals)
    if not labels or not any(v for f in finals.values() for v in f.values()):
        return note_figure(title, "No arm has a final loss.")
    metrics = sorted({m for f in finals.values() for m, v in f.items() if v is not None})
    fig = new_figure(8.0, 1.4 + 0.5 * len(labels) * max(1, len(metrics)) ** 0.5)
    ax = fig.subplots()
    y = np.arange(len(labels))
    offsets = np.linspace(-0.15, 0.15, len(metrics)) if len(metrics) > 1 else [0.0]
    for metric, offset in zip(metrics, offsets, strict=True):
        points = [_error(finals[label].get(metric)) for label in labels]
        ax.errorbar(
            [m for m, _ in points],
            y + offset,
            xerr=[w for _, w in points],
            fmt="o",
            capsize=3,
            label=metric,
        )
        for i, (mean, width) in enumerate(points):
            if not math.isnan(mean):
                text = f"{mean:.4f}" + (f" ± {width:.4f}" if width else " (n=1)")
                ax.annotate(
                    text,
                    (mean, y[i] + offset),
                    xytext=(4, 3),
                    textcoords="offset points",
                    fontsize=6,
                )
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def lr_grid(
    grid: Mapping[str, Sequence[tuple[float, MeanInterval | None]]],
    chosen: Mapping[str, float | None],
) -> Figure:
    """Mean val loss over seeds against learning rate per arm (log x), 95% t-interval error
    bars; the chosen rate ringed."""
    title = "Learning-rate grid: mean val loss over seeds (chosen rate ringed)"
    usable = {k: [(lr, s) for lr, s in v if s is not None] for k, v in grid.items()}
    if not any(len(v) > 1 for v in usable.values()):
        no_grid = "No learning-rate grid: every arm ran at one rate (no optim.lr sweep)."
        return note_figure(title, no_grid)
    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    for label, points in usable.items():
        if not points:
            continue
        rates = [lr for lr, _ in points]
        means = [s.mean for _, s in points]
        widths = [s.half_width or 0.0 for _, s in points]
        bars = ax.errorbar(rates, means, yerr=widths, marker="o", capsize=3, label=label)
        best = chosen.get(label)
        if best is not None and best in rates:
            mean = means[rates.index(best)]
            ax.plot(
                [best],
                [mean],
                "o",
                markersize=12,
                fillstyle="none",
                color=bars.lines[0].get_color(),
            )
    ax.set_xscale("log")
    ax.set_xlabel("optim.lr")
    ax.set_ylabel("final val/loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
