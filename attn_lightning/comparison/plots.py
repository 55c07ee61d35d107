"""Figures of a sweep comparison: one line, bar, panel or row per run.

Every function returns a figure even without data (a note says what is missing), so a
comparison always has the same files and no figure of an earlier report survives stale.
Runs are keyed by their label; None (or empty) marks a run without the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from attn_lightning.analysis.plots import (
    annotate_cells,
    loss_curves,
    mask_grid,
    new_figure,
    note_figure,
)


def _missing(values: Mapping[str, object]) -> str:
    absent = [
        label for label, v in values.items() if v is None or (hasattr(v, "__len__") and not len(v))
    ]
    return f"no data: {', '.join(absent)}" if absent else ""


def val_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """Validation loss against step, one line per run."""
    title = "Validation loss"
    if not any(curves.values()):
        return note_figure(title, "No run logged val/loss (csv/metrics.csv).")
    series = {
        label: tuple(zip(*points, strict=True)) or ((), ()) for label, points in curves.items()
    }
    fig = loss_curves(series, title, "val/loss (nats/token)")
    missing = _missing(curves)
    if missing:
        fig.supxlabel(missing, fontsize=7)
    return fig


def final_loss_bars(finals: Mapping[str, tuple[float | None, float | None, str]]) -> Figure:
    """Final validation (and test) loss per run, horizontal bars; runs without a value say
    why (their status)."""
    title = "Final loss per run"
    labels = list(finals)
    if not labels:
        return note_figure(title, "No runs.")
    has_test = any(test is not None for _, test, _ in finals.values())
    fig = new_figure(8.0, 1.2 + 0.45 * len(labels) * (2 if has_test else 1))
    ax = fig.subplots()
    y = np.arange(len(labels))
    height = 0.4 if has_test else 0.7
    series = [("val/loss", 0, -height / 2 if has_test else 0.0)]
    if has_test:
        series.append(("test/loss", 1, height / 2))
    for name, index, offset in series:
        values = [finals[label][index] for label in labels]
        shown = [math.nan if v is None else v for v in values]
        bars = ax.barh(y + offset, shown, height=height, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7, padding=2)
    highest = max((v for f in finals.values() for v in f[:2] if v is not None), default=1.0)
    ax.set_xlim(0, highest * 1.15)  # from zero, room for the value labels
    for i, label in enumerate(labels):
        val, test, status = finals[label]
        if val is None and test is None:
            ax.text(0, i, f"  {status}", va="center", fontsize=8, color="crimson")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _grid(n: int, cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def pattern_panels(patterns: Mapping[str, Sequence[Sequence[float]] | None]) -> Figure:
    """One (T, T) heatmap per run: its attention on the same validation window, averaged over
    layers and heads (keys on x, queries on y). One colour scale for all runs."""
    title = "Attention on the first validation window (mean over layers and heads)"
    present = {k: np.asarray(v, dtype=float) for k, v in patterns.items() if v}
    if not present:
        return note_figure(title, "No run recorded an attention pattern (run_report callback).")
    rows, cols = _grid(len(patterns))
    fig = new_figure(3.2 * cols + 1.0, 3.3 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    positive = np.concatenate([p[p > 0] for p in present.values()] or [np.ones(1)])
    vmax = float(np.quantile(positive, 0.99)) if positive.size else 1.0
    image = None
    for ax, label in zip(axes, patterns, strict=False):
        ax.set_title(label, fontsize=8)
        if label not in present:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        image = ax.imshow(present[label], cmap="viridis", vmin=0.0, vmax=max(vmax, 1e-6))
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(patterns) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(title)
    return fig


def layer_heatmap(
    values: Mapping[str, Sequence[float] | None], title: str, unit: str, cmap: str = "magma"
) -> Figure:
    """A runs x layers table of one statistic as an annotated heatmap (blank: no such layer or
    no data)."""
    present = {k: v for k, v in values.items() if v}
    if not present:
        return note_figure(title, "No run recorded attention statistics (run_report callback).")
    labels = list(values)
    n_layer = max(len(v) for v in present.values())
    data = np.full((len(labels), n_layer), np.nan)
    for i, label in enumerate(labels):
        row = values[label] or []
        data[i, : len(row)] = row
    fig = new_figure(
        3.5 + 0.9 * n_layer + 0.04 * max(len(x) for x in labels), 1.4 + 0.4 * len(labels)
    )
    ax = fig.subplots()
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    pad = 0.5e-3 * max(abs(high), 1.0)
    if high - low < 2 * pad:  # near-constant (untrained runs): a readable scale around it
        low, high = low - pad, high + pad
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto", vmin=low, vmax=high)
    annotate_cells(ax, data, fontsize=7)
    ax.set_xticks(range(n_layer), [f"layer {layer}" for layer in range(n_layer)], fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, label=unit)
    bar.formatter.set_useOffset(False)
    return fig


def mask_panels(masks: Mapping[str, Sequence[str] | None]) -> Figure:
    """Which (query, key) pairs each run's attention connects: rows of '0'/'1' per run, as
    recorded from the run's own layer (analysis/masks.py)."""
    title = "Which (query, key) pairs each run's attention connects"
    present = {
        label: torch.tensor([[c == "1" for c in row] for row in rows])
        for label, rows in masks.items()
        if rows
    }
    if not present:
        return note_figure(title, "No run recorded its attention mask (run_report callback).")
    return mask_grid(present, title)
