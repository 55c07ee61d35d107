"""A sweep's comparison: one row per run (job), `comparison.md`, `comparison.csv` and figures.

The same function serves the Hydra callback at the end of a multirun and
`python -m attn_lightning.compare` on saved sweeps: `compare_runs(sweep_dirs, output_dir)`.

Honesty checks, because a table invites reading every difference as the variant's doing:
- parameters: counted per run and shown against a reference (the largest run with vanilla
  attention, else the largest run); variants carry projections of their own (GQA/MQA fewer,
  Linformer more) even with the model config shared;
- like with like: the config keys that must agree (data, steps, seed: stamped by the callback)
  and the steps actually trained are compared, and every run that differs from the majority is
  flagged, in the table and in a warning above it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import markdown_table
from attn_lightning.atomic import write_text
from attn_lightning.comparison.arms import deliberate_settings
from attn_lightning.comparison.columns import (
    COLUMNS,
    Column,
    Row,
    attention_name,
    cell,
    comparable,
    comparison_rows,
    differences,
    params,
    reference_run,
    render_csv,
)
from attn_lightning.comparison.plots import (
    final_loss_bars,
    layer_heatmap,
    mask_panels,
    pattern_panels,
    val_loss_curves,
)
from attn_lightning.comparison.protocol_report import write_protocol
from attn_lightning.comparison.runs import Run, load_runs
from attn_lightning.comparison.suite_report import write_suite
from attn_lightning.comparison.tradeoff_plots import (
    STATE_FIGURE,
    THROUGHPUT_FIGURE,
    WIDTH_FIGURE,
    quality_vs_width,
    tradeoff_figures,
    width_of,
)

FIGURES = {
    "loss_curves.png": "Validation loss against step",
    "final_loss_bar.png": "Final losses",
    "attention_patterns.png": "Attention patterns (mean over layers and heads)",
    "attention_entropy.png": "Attention entropy per layer",
    "attention_distance.png": "Attention distance per layer",
    "attention_masks.png": "Which (query, key) pairs each run's attention connects",
    STATE_FIGURE: "Quality against decoding-state size",
    THROUGHPUT_FIGURE: "Quality against training tokens/s",
    WIDTH_FIGURE: "Quality against model width",
}


def shared_overrides(runs: Sequence[Run]) -> list[str]:
    """Overrides every run was given (the sweep's constants), in the first run's order."""
    if not runs:
        return []
    common = set(runs[0].overrides).intersection(*(r.overrides for r in runs[1:]))
    return [o for o in runs[0].overrides if o in common]


def short_labels(runs: Sequence[Run]) -> dict[str, str]:
    """`<job> <overrides that vary>`: what tells the runs apart, for figures and tables."""
    shared = set(shared_overrides(runs))
    labels = {}
    for run in runs:
        varying = [o for o in run.overrides if o not in shared]
        labels[run.label] = " ".join([run.label, *varying])
    return labels


def render_markdown(
    runs: Sequence[Run],
    rows: Sequence[Row],
    sources: list[str],
    columns: Sequence[Column] = COLUMNS,
) -> str:
    """comparison.md: warnings first (what is not like with like), then the table, then the
    figures."""
    labels = short_labels(runs)
    flags, differing = differences(runs)
    lines = ["# Sweep comparison", ""]
    lines += [f"Runs from {', '.join(f'`{s}`' for s in sources)}."]
    lines += [
        "",
        "One row per run here; [protocol.md](protocol.md) has one row per arm (runs alike but "
        "for seed and learning rate): mean and 95% interval over seeds at the rate chosen on "
        "validation, and which arms are indistinguishable from the best.",
    ]
    shared = shared_overrides(runs)
    if shared and len(runs) > 1:
        lines += ["", f"Overrides shared by every run: `{' '.join(shared)}`"]
    counts = Counter(row["status"] for row in rows)
    lines += ["", "Status: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]

    lines += ["", "## Like with like", ""]
    if differing:
        lines += [
            "**Warning: not like with like.** These settings differ between runs, so the "
            "differences in the table are not due to the varied option alone; flagged runs "
            "(⚠ in the table) differ from the majority:",
            "",
        ]
        table = []
        for key, values in differing.items():
            table += [[f"`{key}`", f"`{v}`", labels[label]] for label, v in values.items()]
        lines += markdown_table(["setting", "value", "run"], table)
    else:
        on_purpose = deliberate_settings(runs)
        keys = sorted({k for r in runs for k in comparable(r)} - on_purpose)
        if keys:
            lines += [f"Every run shares: {', '.join(_grouped(keys))}."]
        else:
            lines += ["No run recorded its data, steps and seed: nothing could be checked."]
    if deliberate_settings(runs):
        lines += [
            "",
            "The seeds differ on purpose (a sweep over seeds): `protocol.md` averages each arm "
            "over its seeds, with intervals, and checks that the arms share them.",
        ]

    reference = reference_run(runs)
    counted = [r for r in rows if r["params"]]
    lines += ["", "## Parameter budget", ""]
    if reference is not None and counted:
        low = min(r["params"] for r in counted)
        high = max(r["params"] for r in counted)
        lines += [
            f"Reference: run {labels[reference.label]} ({attention_name(reference) or '?'}), "
            f"{params(reference):,} parameters (position embeddings excluded, as nanoGPT counts)."
            f" Runs span {low:,} to {high:,}.",
        ]
        if high != low:
            lines += [
                "",
                "The model config is shared, but variants carry projections of their own "
                "(grouped/multi-query attention: smaller key/value projections; Linformer: "
                "segment projections). A lower loss with more parameters is not a like-with-like "
                "win: read the `Δparams` column next to the losses.",
            ]
    else:
        lines += ["No run recorded its parameter count."]

    lines += ["", "## Results", ""]
    lines += _results_table(rows, labels, flags, columns)
    if any(r["peak_memory_includes_earlier_jobs"] for r in rows):
        lines += [
            "",
            "\\* Ran in the same process as an earlier job: the process's peak memory includes "
            "the earlier jobs', so this is an upper bound, not the job's own peak. Compare "
            "memory across separate runs (one process each).",
        ]
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "Runs that did not complete:", ""]
        lines += [
            f"- {labels[r['job']]}: {r['status']}: {r['error']} (`{r['dir']}`)" for r in failed
        ]
    for name, caption in FIGURES.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def _grouped(keys: Sequence[str]) -> list[str]:
    """`data.*` (10 settings) for a group of keys, the others by name."""
    heads = Counter(k.split(".")[0] for k in keys if "." in k)
    shown: list[str] = []
    for key in keys:
        head = key.split(".")[0]
        if "." in key and heads[head] > 2:
            group = f"`{head}.*` ({heads[head]} settings)"
            if group not in shown:
                shown.append(group)
        else:
            shown.append(f"`{key}`")
    return shown


def _results_table(
    rows: Sequence[Row],
    labels: dict[str, str],
    flags: dict[str, list[str]],
    columns: Sequence[Column],
) -> list[str]:
    """The markdown columns of the spec that some run has a value for, after the run's label
    (and what it differs in)."""
    shown = [c for c in columns if c.header and any(row[c.name] is not None for row in rows)]
    table = []
    for row in rows:
        flag = f" ⚠ differs: {', '.join(flags[row['job']])}" if flags[row["job"]] else ""
        table.append([labels[row["job"]] + flag, *(cell(c, row) for c in shown)])
    return markdown_table(["run", *(c.header for c in shown)], table)


def write_comparison(runs: Sequence[Run], output_dir: str | Path, sources: list[str]) -> list[Path]:
    """comparison.md, comparison.csv and the figures in output_dir (each written atomically),
    then the protocol's arm-level files (protocol.md, arms.csv, their figures), and for a sweep
    of token tasks the suite's (suite.md, suite.csv, their figures)."""
    out = Path(output_dir)
    rows = comparison_rows(runs)
    labels = short_labels(runs)
    written = [
        write_text(out / "comparison.csv", render_csv(rows)),
        write_text(out / "comparison.md", render_markdown(runs, rows, sources)),
    ]
    curves = {labels[r.label]: r.series.get("val/loss", []) for r in runs}
    finals = {
        labels[row["job"]]: (row["val_loss"], row["test_loss"], row["status"]) for row in rows
    }
    stats = {
        name: {labels[r.label]: _layer_means(r, name) for r in runs}
        for name in ("entropy", "distance")
    }
    figures = {
        "loss_curves.png": val_loss_curves(curves),
        "final_loss_bar.png": final_loss_bars(finals),
        "attention_patterns.png": pattern_panels(
            {labels[r.label]: r.record.attention_pattern if r.record else None for r in runs}
        ),
        "attention_entropy.png": layer_heatmap(
            stats["entropy"], "Attention entropy per layer (mean over heads)", "nats"
        ),
        "attention_distance.png": layer_heatmap(
            stats["distance"],
            "Attention distance per layer (mean over heads)",
            "positions back",
            cmap="viridis",
        ),
        "attention_masks.png": mask_panels(
            {labels[r.label]: r.record.attention_mask if r.record else None for r in runs}
        ),
    }
    figures.update(tradeoff_figures(rows, labels))
    figures[WIDTH_FIGURE] = quality_vs_width(rows, {r.label: width_of(r.overrides) for r in runs})
    written += [save_png(fig, out / name) for name, fig in figures.items()]
    written += write_protocol(runs, rows, out, sources)
    return written + write_suite(runs, rows, out, sources)


def _layer_means(run: Run, name: str) -> list[float] | None:
    per_layer = (run.record.attention_stats or {}).get(name) if run.record else None
    if not per_layer:
        return None
    return [sum(heads) / len(heads) for heads in per_layer]


def compare_runs(roots: Sequence[str | Path], output_dir: str | Path) -> list[Path]:
    """Load every run under `roots` (sweep or run dirs) and write the comparison to
    output_dir. Raises UserError when a root does not exist or holds no run."""
    runs = load_runs([Path(r) for r in roots])
    return write_comparison(runs, output_dir, [str(r) for r in roots])
