"""Matplotlib figures (object-oriented API on the Agg canvas: no pyplot state, no display).

Heatmaps put keys on x and queries on y, as the matrix is written: row i = where query i looks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from attn_lightning.atomic import atomic_write

MAX_LABELLED_TOKENS = 64  # longer sequences get position numbers instead of characters
VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}  # whitespace drawn as a visible glyph


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def note_figure(title: str, text: str) -> Figure:
    """A figure that says what is missing: a comparison's files are the same with or without
    data."""
    fig = new_figure(6.0, 2.0)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    fig.suptitle(title)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write fig as PNG atomically (attn_lightning/atomic.py)."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return Path(path)


def figure_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array (for TensorBoard's images tab)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def visible(tokens: Sequence[str]) -> list[str]:
    return [VISIBLE.get(t, t) for t in tokens]


def _panel_size(T: int, labelled: bool) -> float:
    """Inches per heatmap: room for T character labels of at least 4 points."""
    return min(7.0, max(3.5, T * 0.13)) if labelled else 3.0


def _heatmap(ax, matrix: Tensor, tokens: Sequence[str] | None, vmax: float, title: str, panel):
    """One attention heatmap on ax; returns the image (for a colour bar)."""
    T = matrix.size(-1)
    image = ax.imshow(matrix.float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_title(title, fontsize=9)
    if tokens is not None and T <= MAX_LABELLED_TOKENS:
        labels = visible(tokens)
        size = max(3.0, min(8.0, 0.6 * panel * 72 / T))  # points per row, 60% of it for text
        ax.set_xticks(range(T), labels, fontsize=size, fontfamily="monospace")
        ax.set_yticks(range(T), labels, fontsize=size, fontfamily="monospace")
        ax.tick_params(length=0)
    ax.set_xlabel("key", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    return image


def _vmax(att: Tensor) -> float:
    """Colour scale top: the 99th percentile of positive weights (a few near-1 entries on the
    first queries would otherwise wash every other weight out)."""
    positive = att[att > 0].float()
    if positive.numel() == 0:
        return 1.0
    return max(float(torch.quantile(positive[:1_000_000], 0.99)), 1e-6)


def attention_heads(
    att: Tensor, tokens: Sequence[str] | None = None, title: str = "attention"
) -> Figure:
    """One row of heatmaps, one per head, of a layer's (H, T, T) attention, one colour bar."""
    H, T, _ = att.shape
    panel = _panel_size(T, tokens is not None and T <= MAX_LABELLED_TOKENS)
    fig = new_figure(panel * H + 1.0, panel + 0.8)
    axes = fig.subplots(1, H, squeeze=False)[0]
    vmax = _vmax(att)
    image = None
    for h, ax in enumerate(axes):
        image = _heatmap(ax, att[h], tokens, vmax, f"head {h}", panel)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention weight")
    fig.suptitle(title)
    return fig


def attention_patterns(
    layers: Sequence[Tensor], tokens: Sequence[str] | None = None, title: str = "attention"
) -> Figure:
    """Grid of heatmaps, a row per layer and a column per head, of (H, T, T) matrices."""
    L, H, T = len(layers), layers[0].size(0), layers[0].size(-1)
    panel = _panel_size(T, tokens is not None and T <= MAX_LABELLED_TOKENS)
    fig = new_figure(panel * H + 1.0, panel * L + 0.8)
    axes = fig.subplots(L, H, squeeze=False)
    vmax = _vmax(torch.stack([a.float() for a in layers]))
    image = None
    for layer, att in enumerate(layers):
        for h in range(H):
            name = f"layer {layer}, head {h}"
            image = _heatmap(axes[layer, h], att[h], tokens, vmax, name, panel)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(title)
    return fig


def annotate_cells(ax, data: np.ndarray, fontsize: int) -> None:
    """Write each finite value of a heatmap on its cell, readable on any colour."""
    for (i, j), value in np.ndenumerate(data):
        if np.isfinite(value):
            ax.text(
                j,
                i,
                f"{value:.3g}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white",
                bbox={"facecolor": "black", "alpha": 0.35, "pad": 1, "linewidth": 0},
            )


def head_heatmap(
    values: Tensor, title: str, label: str, cmap: str = "magma", center: bool = False
) -> Figure:
    """A (L, H) table of per-head values as an annotated heatmap (layers down, heads across)."""
    L, H = values.shape
    data = values.float().cpu().numpy()
    fig = new_figure(2.8 + 0.9 * H, 1.4 + 0.6 * L)
    ax = fig.subplots()
    low, high = float(data.min()), float(data.max())
    if center:
        high = max(abs(low), abs(high)) or 1.0
        low = -high
    elif high - low < 1e-3 * max(abs(high), 1.0):  # near-constant: a readable scale around it
        low, high = low - 0.5e-3 * max(abs(low), 1.0), high + 0.5e-3 * max(abs(high), 1.0)
    image = ax.imshow(data, cmap=cmap, aspect="auto", vmin=low, vmax=high)
    annotate_cells(ax, data, fontsize=8)
    ax.set_xticks(range(H), [f"head {h}" for h in range(H)], fontsize=8)
    ax.set_yticks(range(L), [f"layer {layer}" for layer in range(L)], fontsize=8)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, label=label)
    bar.formatter.set_useOffset(False)
    return fig


def ablation_figure(head_increase: Tensor, layer_increase: Tensor, base_loss: float) -> Figure:
    """Validation-loss increase when each head (left) or each whole layer (right) is zeroed."""
    L, H = head_increase.shape
    fig = new_figure(5.0 + 0.9 * H, 1.8 + 0.6 * L)
    ax_heads, ax_layers = fig.subplots(1, 2, width_ratios=[H, 1.6])
    for ax, data, xticks, title in (
        (ax_heads, head_increase, [f"head {h}" for h in range(H)], "one head zeroed"),
        (ax_layers, layer_increase[:, None], ["all heads"], "whole layer zeroed"),
    ):
        data = data.float().cpu().numpy()
        bound = float(np.abs(data).max()) or 1.0
        image = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        for (i, j), value in np.ndenumerate(data):
            color = "white" if abs(value) > 0.6 * bound else "black"
            ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(data.shape[1]), xticks, fontsize=8)
        ax.set_yticks(range(L), [f"layer {layer}" for layer in range(L)], fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, label="val loss increase (nats/token)")
    fig.suptitle(f"Ablation: validation loss increase over {base_loss:.4f}")
    return fig


def loss_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "Loss curves",
    ylabel: str = "loss (nats/token)",
) -> Figure:
    """Loss against optimizer step, one line per named curve (e.g. train/loss, val/loss)."""
    fig = new_figure(7.0, 4.2)
    ax = fig.subplots()
    for name, (steps, values) in curves.items():
        if len(steps):
            marker = "o" if len(steps) <= 30 else None
            ax.plot(steps, values, label=name, marker=marker, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if len(curves) > 4 else None)
    return fig


def mask_grid(masks: Mapping[str, Tensor], title: str = "Attention masks") -> Figure:
    """One black/white (T, T) panel per variant: white where query i can reach key j."""
    n = len(masks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = new_figure(3.0 * cols, 3.2 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, mask) in zip(axes, masks.items(), strict=False):
        T = mask.size(-1)
        ax.imshow(mask.float().cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        share = float(mask.float().sum()) / (T * (T + 1) / 2)
        ax.set_title(f"{name}\n{share:.0%} of causal pairs", fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig
