"""What a sweep writes: results.csv (a row per variant and length), results.md (tables, fits,
failures; also printed) and time.png / memory.png (log-log)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import markdown_table
from attn_lightning.analysis.scaling import (
    crossover_length,
    fit_points,
    scaling_exponent,
    scaling_figure,
)
from attn_lightning.atomic import write_text
from attn_lightning.bench.attention.settings import BASELINE, MiB, Settings
from attn_lightning.bench.attention.sweep import Measurement


def _series(results: Sequence[Measurement], name: str, metric: str) -> tuple[list[int], list]:
    rows = [r for r in results if r.variant == name]
    return [r.length for r in rows], [getattr(r, metric) if r.ok else math.nan for r in rows]


def summary(results: Sequence[Measurement], variants: Sequence[str]) -> dict[str, dict]:
    """Per variant: time and memory exponents with the lengths they were fitted on, and the
    crossover length against vanilla (absent when vanilla was not run)."""
    out: dict[str, dict] = {}
    base = [r for r in results if r.variant == BASELINE]
    for name in variants:
        entry: dict[str, Any] = {}
        for metric in ("time_ms", "memory_mib"):
            lengths, values = _series(results, name, metric)
            entry[f"{metric}_exponent"] = scaling_exponent(lengths, values)
            entry[f"{metric}_fit_lengths"] = [n for n, _ in fit_points(lengths, values)]
        if base and name != BASELINE:
            rows = {r.length: r for r in results if r.variant == name}
            common = [r.length for r in base if r.length in rows]
            entry["crossover"] = crossover_length(
                common,
                [rows[n].time_ms if rows[n].ok else None for n in common],
                [r.time_ms if r.ok else None for r in base if r.length in rows],
            )
        out[name] = entry
    return out


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _cell(result: Measurement, text: Callable[[Measurement], str]) -> str:
    return text(result) if result.ok else result.status.split(":")[0]


def render_markdown(settings: Settings, results: Sequence[Measurement]) -> str:
    """Tables of time, memory and quality (a row per variant, a column per length), the
    fitted exponents and crossovers, and the failures with their messages."""
    lengths = sorted({r.length for r in results})
    by_key = {(r.variant, r.length): r for r in results}
    header = ["variant", *(str(n) for n in lengths)]

    def table(text: Callable[[Measurement], str]) -> list[str]:
        rows = [
            [name, *(_cell(by_key[name, n], text) for n in lengths)] for name in settings.variants
        ]
        return markdown_table(header, rows)

    device = torch.device(settings.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Attention benchmark",
        "",
        f"{where}, {settings.dtype}; batch {settings.batch_size}, {settings.heads} heads of "
        f"dimension {settings.head_dim}; the attention core (between the projections), "
        f"forward + backward; median of {settings.repeats} after {settings.warmup} warm-up; "
        f"limit {settings.time_limit:g} s per measurement.",
        "",
        "## Time (ms, forward + backward)",
        "",
        *table(lambda r: _number(r.time_ms)),
        "",
        "## Peak memory (MiB allocated during a call, inputs excluded)",
        "",
        *table(lambda r: _number(r.memory_mib)),
        "",
        "## Cosine similarity to exact causal softmax (output / attention matrix)",
        "",
        *table(
            lambda r: (
                f"{r.output_cosine:.4f} / "
                + ("–" if math.isnan(r.matrix_cosine) else f"{r.matrix_cosine:.4f}")
            )
        ),
        "",
        "Attention matrices are compared while B*H*T*T float32 values fit in "
        f"{settings.matrix_limit / MiB:g} MiB (– beyond).",
        "",
        "## Scaling with sequence length",
        "",
    ]
    fits = summary(results, settings.variants)

    def exponent(entry: dict, metric: str) -> str:
        value, used = entry[f"{metric}_exponent"], entry[f"{metric}_fit_lengths"]
        return "–" if value is None else f"{value:.2f} ({used[0]}–{used[-1]})"

    def crossover(name: str, entry: dict) -> str:
        if name == BASELINE:
            return "(baseline)"
        if "crossover" not in entry:
            return "n/a (vanilla not run)"
        return "never" if entry["crossover"] is None else str(entry["crossover"])

    lines += markdown_table(
        ["variant", "time exponent (lengths)", "memory exponent (lengths)", "faster than vanilla"],
        [
            [name, exponent(e, "time_ms"), exponent(e, "memory_mib"), crossover(name, e)]
            for name, e in fits.items()
        ],
    )
    lines += [
        "",
        "Exponent: least-squares slope of log(cost) against log(T) over the upper half of the "
        "lengths that ran (all of them when fewer than 4). Faster than vanilla: the first length "
        "from which the variant stays faster (a length where vanilla did not finish counts as "
        "faster).",
    ]
    failures = [r for r in results if not r.ok and r.status != "skipped"]
    if failures:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r.variant}, T={r.length}: {r.status}" for r in failures]
    return "\n".join(lines) + "\n"


def render_csv(settings: Settings, results: Sequence[Measurement]) -> str:
    """A row per measurement (its fields), then the shapes shared by the whole sweep."""
    shared = {
        "batch_size": settings.batch_size,
        "heads": settings.heads,
        "head_dim": settings.head_dim,
        "dtype": settings.dtype,
        "device": settings.device,
    }
    columns = [f.name for f in fields(Measurement)] + list(shared)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({**asdict(result), **shared})
    return buffer.getvalue()


def write_outputs(
    settings: Settings, results: Sequence[Measurement], output_dir: str | Path
) -> dict[str, Path]:
    """results.csv, results.md, time.png and memory.png in output_dir, each written atomically."""
    output_dir = Path(output_dir)
    paths = {
        "csv": write_text(output_dir / "results.csv", render_csv(settings, results)),
        "markdown": write_text(output_dir / "results.md", render_markdown(settings, results)),
    }
    figures = {
        "time": ("time_ms", "forward + backward time (ms)"),
        "memory": ("memory_mib", "peak memory (MiB)"),
    }
    for key, (metric, label) in figures.items():
        series = {name: _series(results, name, metric) for name in settings.variants}
        title = f"attention core, B={settings.batch_size} H={settings.heads} D={settings.head_dim}"
        paths[key] = save_png(scaling_figure(series, label, title), output_dir / f"{key}.png")
    return paths
