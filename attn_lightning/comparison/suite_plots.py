"""Figures of the suite score (suite.py): the leaderboard as a heatmap of variants over tasks,
and recall against decoding-state size (Zoology's trade-off, tradeoff_plots.quality_scatter).

Like the other comparison figures, each function returns a figure even without data (a note
says what is missing), so the sweep dir always has the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from attn_lightning.analysis.plots import new_figure, note_figure
from attn_lightning.comparison.suite import SUITE, Score
from attn_lightning.comparison.tradeoff_plots import Point, quality_scatter

HEATMAP_FIGURE = "suite_heatmap.png"
RECALL_FIGURE = "recall_vs_state.png"
MARK_SHORT = {"best": "best", "≈ best": "≈ best"}  # a `worse` cell carries no mark


def cell_text(score: Score | None) -> str:
    """`0.93 ± 0.02` over `≈ best` (the mark for best and ≈ best only); `0.93 (n=1)`."""
    summary = score.summary if score else None
    if score is None or summary is None:
        return ""
    spread = f"± {summary.half_width:.2f}" if summary.half_width is not None else "(n=1)"
    mark = MARK_SHORT.get(score.verdict.mark, "")
    return f"{summary.mean:.2f}\n{spread}" + (f"\n{mark}" if mark else "")


def suite_heatmap(
    variants: Sequence[str], tasks: Sequence[str], scores: Mapping[str, Mapping[str, Score]]
) -> Figure:
    """Variants (rows) over tasks and the suite (columns): colour = mean test answer accuracy
    over seeds at the rates chosen on validation, text = mean ± 95% half width, and the mark
    against the best variant of the column."""
    title = "Suite: test answer accuracy (rate chosen on validation), mean ± 95% t-interval"
    columns = [*tasks, SUITE]
    if not variants or not tasks:
        return note_figure(title, "No run logged a test answer accuracy per setting.")
    grid = np.full((len(variants), len(columns)), math.nan)
    for i, variant in enumerate(variants):
        for j, task in enumerate(columns):
            summary = scores[variant][task].summary if task in scores[variant] else None
            if summary is not None:
                grid[i, j] = summary.mean
    width = 2.6 + 1.15 * len(columns) + 0.06 * max(len(v) for v in variants)
    fig = new_figure(width, 1.6 + 0.62 * len(variants))
    ax = fig.subplots()
    ax.set_facecolor("0.9")  # a cell without a score stays grey
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i, variant in enumerate(variants):
        for j, task in enumerate(columns):
            text = cell_text(scores[variant].get(task)) or "no score"
            dark = grid[i, j] > 0.6 or math.isnan(grid[i, j])  # black on the light end of viridis
            color = "black" if dark else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.axvline(len(tasks) - 0.5, color="white", linewidth=3)  # the suite apart from the tasks
    ax.set_xticks(range(len(columns)), [c.removeprefix("mad_") for c in columns], fontsize=8)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="test answer accuracy", shrink=0.9)
    fig.supxlabel(
        "marks per column: best, ≈ best (Welch vs best, Holm-adjusted p ≥ 0.05); "
        "none: worse or untested",
        fontsize=7,
    )
    return fig


def recall_vs_state(
    points: Mapping[str, Point], errors: Mapping[str, float | None], contexts: Sequence[int]
) -> Figure:
    """Score on each recall task against the variant's decoding state at that task's block
    size: one point per (variant, task), coloured by variant, with its 95% interval."""
    title = "Recall against decoding state (Zoology)"
    if not points:
        return note_figure(title, "No recall task (MQAR, MAD's in-context, fuzzy, noisy recall).")
    at = "T=" + ", ".join(map(str, sorted(contexts))) if contexts else "T unknown"
    fig = quality_scatter(
        points,
        title,
        f"decoding state, KiB per sequence at the task's block size ({at}; log scale)",
        "test answer accuracy (rate chosen on validation)",
        log_x=True,
        y_errors=errors,
    )
    fig.axes[0].set_ylim(-0.02, 1.02)  # an accuracy: intervals of few seeds reach past [0, 1]
    return fig
