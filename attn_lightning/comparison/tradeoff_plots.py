"""What a variant's quality costs: final quality against decoding-state size (Zoology's
recall-memory plot, Arora et al. 2023: a recurrent state buys its speed with what it can
recall) and against training throughput. One point per run, coloured by attention variant.

Quality is the sweep's task accuracy when some run logged one (higher is better), else its
validation loss (lower is better); the axis says which. Runs without either value are named
below the plot, as in the other comparison figures (plots.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from attn_lightning.analysis.plots import new_figure

Row = Mapping[str, Any]  # a row of comparison_rows (comparison/columns.py)

# The comparison columns that measure quality, in order of preference: (column, axis label).
QUALITY = (
    ("val_answer_token_acc", "val answer-token accuracy (higher is better)"),
    ("val_exact_match", "val exact match (higher is better)"),
    ("val_loss", "val loss, nats/token (lower is better)"),
)
STATE_FIGURE = "quality_vs_state_size.png"
THROUGHPUT_FIGURE = "quality_vs_tokens_per_sec.png"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class Point(NamedTuple):
    x: float | None
    quality: float | None
    variant: str  # the colour: runs of one variant share it


def quality_column(rows: Sequence[Row]) -> tuple[str, str]:
    """The first quality column some run has a value for (val loss when none has)."""
    for column, label in QUALITY:
        if any(row.get(column) is not None for row in rows):
            return column, label
    return QUALITY[-1]


def quality_scatter(
    points: Mapping[str, Point],
    title: str,
    x_label: str,
    quality_label: str,
    log_x: bool,
    y_errors: Mapping[str, float | None] | None = None,
) -> Figure:
    """Quality (y) against a cost (x), one labelled point per run; a note without data.
    `y_errors`: half widths of intervals around some points' quality, drawn as error bars."""
    shown = {
        label: p
        for label, p in points.items()
        if _finite(p.x) and _finite(p.quality) and (p.x > 0 or not log_x)
    }
    fig = new_figure(7.0, 4.5)
    ax = fig.subplots()
    ax.set_title(title)
    if not shown:
        ax.axis("off")
        ax.text(0.5, 0.5, "No run has both values.", ha="center", va="center", fontsize=10)
        return fig
    for variant in dict.fromkeys(p.variant for p in shown.values()):
        mine = {label: p for label, p in shown.items() if p.variant == variant}
        dots = ax.scatter(
            [p.x for p in mine.values()], [p.quality for p in mine.values()], label=variant
        )
        bars = {label: (y_errors or {}).get(label) for label in mine}
        for label, width in bars.items():
            if width:
                p = mine[label]
                color = dots.get_facecolor()[0]
                ax.errorbar([p.x], [p.quality], yerr=[width], color=color, capsize=3, fmt="none")
        for label, p in mine.items():
            ax.annotate(
                label, (p.x, p.quality), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    if log_x:
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 1, 2, 5, 10, 20, ...
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="both", labelsize=7)
    ax.margins(x=0.3, y=0.1)  # room for the point labels
    ax.set_xlabel(x_label)
    ax.set_ylabel(quality_label)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    missing = [label for label in points if label not in shown]
    if missing:
        fig.supxlabel(f"no data: {', '.join(missing)}", fontsize=7)
    return fig


def _context(rows: Sequence[Row]) -> str:
    """`T=64` (or `T=56, 64`): the context lengths the state sizes were measured at."""
    contexts = sorted({r["decoding_state_context"] for r in rows} - {None})
    return "T=" + ", ".join(str(c) for c in contexts) if contexts else "T unknown"


def tradeoff_figures(rows: Sequence[Row], labels: Mapping[str, str]) -> dict[str, Figure]:
    """The two figures by file name, from the comparison's rows (`labels`: job -> label)."""
    column, quality_label = quality_column(rows)

    def points(x: str) -> dict[str, Point]:
        return {labels[r["job"]]: Point(r[x], r.get(column), r["attention"] or "?") for r in rows}

    return {
        STATE_FIGURE: quality_scatter(
            points("decoding_state_kib"),
            f"Quality against decoding state ({_context(rows)})",
            f"decoding state, KiB per sequence at {_context(rows)} (log scale)",
            quality_label,
            log_x=True,
        ),
        THROUGHPUT_FIGURE: quality_scatter(
            points("tokens_per_sec_median"),
            "Quality against training throughput",
            "training tokens/s (median of the logged intervals; noisy on a shared machine)",
            quality_label,
            log_x=False,
        ),
    }


WIDTH_FIGURE = "quality_vs_width.png"
WIDTH_OVERRIDE = "model.n_embd"  # the axis of Zoology's Figure 2 (experiment=mqar_figure2)
WIDTH_QUALITY = (("test_answer_token_acc", "test answer-token accuracy (higher is better)"),)


def width_of(overrides: Sequence[str]) -> int | None:
    """The model width a run's command line set (`model.n_embd=64`), if it set one."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == WIDTH_OVERRIDE and value.isdigit():
            return int(value)
    return None


def quality_vs_width(rows: Sequence[Row], widths: Mapping[str, int | None]) -> Figure:
    """Zoology's Figure 2: final quality against model width, one line per variant (the mean
    of its runs at each width, several seeds alike), widths on a log-2 axis. `widths`: job ->
    the width its overrides set; a sweep that varies no width gets a note instead."""
    column, label = next(
        ((c, lbl) for c, lbl in WIDTH_QUALITY if any(r.get(c) is not None for r in rows)),
        quality_column(rows),
    )
    by_variant: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        width, value = widths.get(row["job"]), row.get(column)
        if width is not None and _finite(value):
            by_variant.setdefault(row["attention"] or "?", {}).setdefault(width, []).append(value)
    fig = new_figure(7.0, 4.5)
    ax = fig.subplots()
    ax.set_title("Quality against model width (Zoology, Figure 2)")
    if len({w for points in by_variant.values() for w in points}) < 2:
        ax.axis("off")
        ax.text(0.5, 0.5, f"No sweep over {WIDTH_OVERRIDE}.", ha="center", va="center")
        return fig
    for variant, points in by_variant.items():
        xs = sorted(points)
        ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=variant)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel(f"model width ({WIDTH_OVERRIDE}, log scale)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
