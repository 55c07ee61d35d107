"""A run's report.md: config summary, final metrics, figures, per-layer attention statistics
and a text sample. Markdown only; the figures are written by the caller (plots.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"


def stats_table(layers: Sequence[Mapping[str, Tensor]]) -> list[str]:
    """Markdown table: a row per layer, a column per statistic (mean over heads), then the
    per-head values of entropy and distance."""
    names = list(layers[0])
    rows = [
        [layer, *(f"{float(s[n].mean()):.3f}" for n in names)] for layer, s in enumerate(layers)
    ]
    lines = markdown_table(["layer", *names], rows)
    for name in ("entropy", "distance"):
        if name in names:
            H = layers[0][name].numel()
            lines += ["", f"{name} per head:", ""]
            lines += markdown_table(
                ["layer", *(f"head {h}" for h in range(H))],
                [
                    [layer, *(f"{v:.3f}" for v in s[name].tolist())]
                    for layer, s in enumerate(layers)
                ],
            )
    return lines


def render_report(
    title: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, float],
    figures: Sequence[tuple[str, str]],
    attention_stats: Sequence[Mapping[str, Tensor]] | None = None,
    sample: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as markdown. `figures`: (caption, path relative to the report)."""
    lines = [f"# {title}", ""]
    lines += [*notes, ""] if notes else []
    lines += ["## Configuration", ""]
    lines += markdown_table(
        ["key", "value"], [[f"`{k}`", f"`{v}`"] for k, v in flatten(config).items()]
    )
    lines += ["", "## Final metrics", ""]
    lines += markdown_table(
        ["metric", "value"], [[f"`{k}`", _number(v)] for k, v in sorted(metrics.items())]
    )
    for caption, path in figures:
        lines += ["", f"## {caption}", "", f"![{caption}]({path})"]
    if attention_stats:
        lines += ["", "## Attention statistics", ""]
        lines += [
            "Means over the probe sequences' queries: entropy in nats, distance in positions, "
            "local ratio = weight on the last few positions, softmax gap = total variation "
            "from exact softmax attention with the same q and k (0 for exact softmax).",
            "",
        ]
        lines += stats_table(attention_stats)
    if sample is not None:
        lines += ["", "## Text sample", "", "```text", sample, "```"]
    return "\n".join(lines) + "\n"
